// kvroute train CONFIG.yaml [CONFIG2.yaml ...] [--set section.key=value ...] [--dump-config]
#include <iostream>

#include "commands.h"
#include "kvroute/config.h"
#include "kvroute/trainer.h"

namespace kvroute::cli {

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model (configs layer left to right, then --set overrides)");
  static std::vector<std::string> files, overrides;
  static bool dump = false;
  cmd->add_option("config", files, "YAML config files; later files override earlier ones")->check(CLI::ExistingFile);
  cmd->add_option("--set", overrides, "Override one key, e.g. --set train.lr=1e-3 (repeatable)");
  cmd->add_flag("--dump-config", dump, "Print the resolved config and exit");
  cmd->callback([] {
    const Config cfg = load_config(files, overrides);
    if (dump) {
      std::cout << to_yaml(cfg);
      return;
    }
    train(cfg);
  });
}

}  // namespace kvroute::cli
