// kvroute: one binary, one subcommand per job.
#include <cstdlib>
#include <exception>
#include <iostream>
#include <new>
#include <string>

#include "commands.h"
#include "kvroute/comm.h"
#include "kvroute/stop_signals.h"

namespace {
// "rank 1: " under an MPI launcher (whose ranks share one terminal), else "".
std::string rank_prefix() {
  if (!kvroute::launched_under_mpi()) return "";
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* r = std::getenv(var)) return std::string("rank ") + r + ": ";
  return "";
}
}  // namespace

namespace kvroute::cli {
void check_tokenizer_or_warn(const CheckpointInfo& info, const TokenizerIdentity& tokenizer, bool allow) {
  const std::string why = tokenizer_mismatch(info, tokenizer);
  if (why.empty()) return;
  if (!allow)
    throw CheckpointError(why + ". Use the checkpoint's tokenizer (--set data.tokenizer=...), or pass "
                          "--allow-tokenizer-mismatch to go on anyway");
  std::cerr << "WARNING: " << why << ". Going on because of --allow-tokenizer-mismatch: the results are not those "
            << "of the model as trained.\n";
}
}  // namespace kvroute::cli

int main(int argc, char** argv) {
  // Before any other thread exists (OpenMP, oneDNN, MPI): stop signals are received by one
  // thread, never by a handler on a compute thread (stop_signals.h).
  kvroute::start_signal_thread();
  CLI::App app{"kvroute: pretrain transformers with stochastic KV routing, and serve them with a depth-wise shared KV cache"};
  app.require_subcommand(1);
  kvroute::cli::add_train_command(app);
  kvroute::cli::add_eval_command(app);
  kvroute::cli::add_generate_command(app);
  kvroute::cli::add_bench_command(app);
  kvroute::cli::add_ckpt_command(app);
  kvroute::cli::add_data_command(app);
  kvroute::cli::add_hf_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    std::cerr << rank_prefix() << "error: out of memory (std::bad_alloc): something the input asked for is larger "
              << "than this machine holds" << std::endl;
    kvroute::abort_job_if_distributed(1);
    return 1;
  } catch (const std::exception& e) {
    std::cerr << rank_prefix() << "error: " << e.what() << std::endl;
    // Under mpirun the other ranks may be waiting in a collective: end the whole job now.
    kvroute::abort_job_if_distributed(1);
    return 1;
  }
  kvroute::finalize_communication();
  return 0;
}
