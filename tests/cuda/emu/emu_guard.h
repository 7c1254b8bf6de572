// Test-only: turns the real TORCH_LIBRARY / TORCH_LIBRARY_IMPL blocks of the included project sources into
// unused functions, so the emulated kernels can live next to the real extension in one process.
#pragma once

#include <torch/library.h>

#undef TORCH_LIBRARY
#undef TORCH_LIBRARY_IMPL
#define MX_EMU_CAT2(a, b) a##b
#define MX_EMU_CAT(a, b) MX_EMU_CAT2(a, b)
#define TORCH_LIBRARY(ns, m) \
  [[maybe_unused]] static void MX_EMU_CAT(mx_emu_unused_, __COUNTER__)([[maybe_unused]] torch::Library & m)
#define TORCH_LIBRARY_IMPL(ns, k, m) \
  [[maybe_unused]] static void MX_EMU_CAT(mx_emu_unused_, __COUNTER__)([[maybe_unused]] torch::Library & m)
