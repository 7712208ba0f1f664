// Memory up front: what a command will need, estimated from the config before anything is
// allocated or created, and refused with the figure and the key to change when it cannot
// fit in this machine's memory (instead of a bare std::bad_alloc after the run directory
// exists, or the kernel's OOM killer).
#pragma once

#include <cstdint>
#include <string>

#include "kvroute/config.h"

namespace kvroute {

// Parameters of a model of this shape (Model's tensors, without building it).
std::size_t param_count(const ModelConfig& mc);
// Bytes of the training activation buffers Model allocates for (B, T) under train.recompute.
double training_activation_bytes(const ModelConfig& mc, int B, int T, const std::string& recompute);
// Bytes of the inference scratch buffers for `rows` tokens in one pass.
double inference_scratch_bytes(const ModelConfig& mc, double rows);
// train on the CPU: weights, gradients, AdamW moments, activations, and the host copies a
// checkpoint write makes (weights and both moments).
double training_memory_bytes(const Config& cfg);

// This machine's memory for the process: MemTotal, or a smaller cgroup limit. 0 if unknown.
double machine_memory_bytes();

// Throws std::runtime_error "<what> needs about X of memory ... this machine has Y; <advice>"
// when needed_bytes exceed the machine's memory. Does nothing when that is unknown.
void check_fits_in_memory(double needed_bytes, const std::string& what, const std::string& advice);

}  // namespace kvroute
