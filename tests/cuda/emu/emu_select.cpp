// Test-only: csrc/cuda/select.cu compiled as host C++ against cuda_emu.h (see emu_register.cpp).
#include "emu_guard.h"

#include "cuda/select.cu"
