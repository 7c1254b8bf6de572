"""Builds matryoshka_ext._C: C++ (CPU) kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment:
  MATRYOSHKA_EXT_CUDA=0|1   force the CUDA kernels off / on (=1 fails at once if they cannot be built)
  MATRYOSHKA_EXT_NATIVE=0   do not tune the CPU code for this machine (-march=native)
  MATRYOSHKA_EXT_SANITIZE=1 build the C++ code with AddressSanitizer + UndefinedBehaviorSanitizer (-O1 -g; for
                            scripts/sanitize.sh, which builds such a copy under build/asan and runs the op tests)
  TORCH_CUDA_ARCH_LIST      CUDA archs; defaults to the visible GPU, or "8.0;9.0" when none is visible
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
NO_ISOLATION = (
    "matryoshka-ext compiles against the torch that will run it. Install torch first, then build with\n"
    "    pip install --no-build-isolation .\n"
    "(a build-isolated install would compile against a different torch and crash at import)."
)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise SystemExit("error: torch is not importable in this build environment.\n" + NO_ISOLATION) from None
    if "pip-build-env" in torch.__file__:
        raise SystemExit(f"error: torch was imported from an isolated build env ({torch.__file__}).\n" + NO_ISOLATION)
    return torch


def _want_cuda(torch) -> tuple[bool, str]:
    """Decide whether to build the CUDA kernels; returns (build, reason)."""
    flag = os.environ.get("MATRYOSHKA_EXT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"error: MATRYOSHKA_EXT_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "MATRYOSHKA_EXT_CUDA=0"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if not nvcc or not os.path.exists(nvcc):
        problems.append("nvcc not found (set CUDA_HOME)")
    if problems:
        if flag == "1":
            raise SystemExit("error: MATRYOSHKA_EXT_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    torch = _import_torch()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    build_cuda, reason = _want_cuda(torch)
    print(f"matryoshka-ext: CUDA kernels {'ON' if build_cuda else 'OFF'} ({reason})", file=sys.stderr)

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"] if sys.platform != "darwin" else ["-O3"]
    if os.environ.get("MATRYOSHKA_EXT_NATIVE", "1") != "0" and shutil.which("gcc"):
        cxx.append("-march=native")
    link = ["-fopenmp"]
    if os.environ.get("MATRYOSHKA_EXT_SANITIZE", "0") == "1":
        # vptr is off: it would check torch's (uninstrumented) classes across library boundaries. -fno-wrapv undoes
        # Python's -fwrapv (in the default CFLAGS), which defines signed overflow and so hides it from UBSan.
        san = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=all"]
        cxx = [f for f in cxx if not f.startswith("-O")] + ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv"] + san
        link += san
    include_dirs = [os.path.join(HERE, "csrc")]
    if build_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        # torch's CUDA headers may look for the pip-installed CUDA libraries' headers.
        import importlib.util

        spec = importlib.util.find_spec("nvidia")  # namespace package of the nvidia-* wheels, when present
        for root in (spec.submodule_search_locations or []) if spec else []:
            include_dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
            include_dirs += sorted(glob.glob(os.path.join(root, "cu*", "include")))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DMX_WITH_CUDA"]
        ext = CUDAExtension(
            "matryoshka_ext._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("MX_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "matryoshka_ext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    return ext, BuildExtension


_ext, _build_ext = _extension()
setup(ext_modules=[_ext], cmdclass={"build_ext": _build_ext.with_options(use_ninja=True)})
