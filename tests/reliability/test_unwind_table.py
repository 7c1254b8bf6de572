"""The built extension must carry an .eh_frame_hdr search table (scripts/unwind_table.py says why it matters: without
one, every C++ exception from our kernels' argument checks unwinds by a linear FDE scan, which crashes on a
malformed entry). One suspect for the H200 box, where any such exception crashed the process."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

import matryoshka_ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "scripts", "unwind_table.py")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared libraries")


def _check(lib: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CHECK, lib], capture_output=True, text=True, timeout=60)


def test_extension_has_an_unwind_search_table():
    (lib,) = glob.glob(os.path.join(os.path.dirname(matryoshka_ext.__file__), "_C*.so"))
    r = _check(lib)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "search table present" in r.stdout


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the counter-example")
def test_checker_flags_a_library_whose_table_the_linker_dropped(tmp_path):
    # An object with an .eh_frame the linker cannot parse: ld says "no .eh_frame_hdr table will be created".
    (tmp_path / "bad.s").write_text(
        '.text\n.globl f\nf: ret\n.section .note.GNU-stack,"",@progbits\n'
        '.section .eh_frame,"a",@progbits\n.long 12\n.long 0\n.byte 7, 0x41, 0x42, 0, 0, 0, 0, 0\n'
    )
    (tmp_path / "ok.c").write_text("int g(int x) { return x + 1; }\n")
    for name, srcs in (("bad", ["ok.c", "bad.s"]), ("ok", ["ok.c"])):
        build = subprocess.run(
            ["gcc", "-shared", "-fPIC", *srcs, "-o", f"{name}.so"], cwd=tmp_path, capture_output=True, text=True
        )
        assert build.returncode == 0, build.stderr
    bad, ok = _check(str(tmp_path / "bad.so")), _check(str(tmp_path / "ok.so"))
    assert bad.returncode == 1 and "NO SEARCH TABLE" in bad.stdout, bad.stdout
    assert ok.returncode == 0 and "search table present" in ok.stdout, ok.stdout
    assert _check(str(tmp_path / "ok.c")).returncode == 2  # not an ELF file
