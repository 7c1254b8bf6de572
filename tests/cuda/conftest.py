"""Dry runs without a GPU: MX_CUDA_TEST_DEVICE=cpu MX_CUDA_TEST_EMU=1 builds the CPU emulator of the CUDA
kernels (tests/cuda/emu) and installs it as the CPU kernels of the public ops for this session."""

import os

if os.environ.get("MX_CUDA_TEST_DEVICE") == "cpu" and os.environ.get("MX_CUDA_TEST_EMU") == "1":
    from .emu.run_emu import build

    build(override_cpu=True)
