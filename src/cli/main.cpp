// kvroute: one binary, one subcommand per job.
#include <exception>
#include <iostream>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvroute: pretrain transformers with stochastic KV routing, and serve them with a depth-wise shared KV cache"};
  app.require_subcommand(1);
  kvroute::cli::add_train_command(app);
  kvroute::cli::add_eval_command(app);
  kvroute::cli::add_generate_command(app);
  kvroute::cli::add_bench_command(app);
  kvroute::cli::add_ckpt_command(app);
  kvroute::cli::add_data_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
