// Each subcommand of the `kvroute` binary registers itself on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

#include "kvroute/checkpoint.h"

namespace kvroute::cli {

void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);
void add_data_command(CLI::App& app);
// `kvroute import hf` and `kvroute export hf` (cmd_hf.cpp).
void add_hf_commands(CLI::App& app);
// `kvroute data probe` (cmd_data_probe.cpp), registered by add_data_command.
void add_data_probe_command(CLI::App& data);

// eval and generate: refuse a tokenizer other than the checkpoint's (tokenizer_mismatch),
// or with allow (--allow-tokenizer-mismatch) print a warning on stderr and go on.
void check_tokenizer_or_warn(const CheckpointInfo& info, const TokenizerIdentity& tokenizer, bool allow);

}  // namespace kvroute::cli
