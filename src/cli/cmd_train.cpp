// kvroute train CONFIG.yaml [CONFIG2.yaml ...] [--set section.key=value ...] [--dump-config]
// kvroute train --resume RUN_DIR [--set train.steps=N ...]
#include <iostream>

#include "commands.h"
#include "kvroute/hf_model.h"
#include "kvroute/config.h"
#include "kvroute/trainer.h"

namespace kvroute::cli {

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model (configs layer left to right, then --set overrides)");
  static std::vector<std::string> files, overrides;
  static bool dump = false, force = false;
  static std::string resume;
  cmd->add_option("config", files, "YAML config files; later files override earlier ones")->check(CLI::ExistingFile);
  cmd->add_option("--set", overrides, "Override one key, e.g. --set train.lr=1e-3 (repeatable)");
  cmd->add_flag("--dump-config", dump, "Print the resolved config and exit");
  cmd->add_option("--resume", resume,
                  "Continue a run from its latest checkpoint (a run directory, or one checkpoint file); "
                  "the config comes from the checkpoint, --set may change e.g. train.steps");
  cmd->add_flag("--force", force,
                "Start a new run even if train.out_dir holds one: that run's config, logs, checkpoints and "
                "model.h5 are deleted first");
  cmd->callback([] {
    if (!resume.empty()) {
      if (!files.empty())
        throw ConfigError("--resume takes the config from the checkpoint; drop the config files (" + files[0] +
                          (files.size() > 1 ? ", ..." : "") + ") and change keys with --set");
      if (force) throw ConfigError("--force starts a new run; --resume continues one: pass only one of them");
      const ResumePlan plan = plan_resume(resume, overrides);
      if (dump) {
        std::cout << to_yaml(plan.config);
        return;
      }
      train(plan.config, TrainOptions{plan.checkpoint, plan.notes});
      return;
    }
    Config cfg = load_config(files, overrides);
    TrainOptions options;
    // model.init_from may name a Hugging Face folder: its config.json then defines the model.
    if (adopt_hf_model_config(cfg, options.notes)) validate(cfg);
    if (dump) {
      std::cout << to_yaml(cfg);
      return;
    }
    options.force = force;
    train(cfg, options);
  });
}

}  // namespace kvroute::cli
