"""Work-folder helpers: where big artefacts live and how to write them without leaving half files.

Everything large (dequantized model copies, the Debian text corpus, HF `datasets` caches) goes under
``$MATRYOSHKA_EXT_CACHE`` (default ``~/.cache/matryoshka_ext``), never inside the repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "MATRYOSHKA_EXT_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The work folder: ``cache_dir``, else ``$MATRYOSHKA_EXT_CACHE``, else ``~/.cache/matryoshka_ext``."""
    root = Path(cache_dir or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "matryoshka_ext")
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed onto ``target`` when the block succeeds.

    A process killed mid-write leaves only a ``.tmp-*`` folder (never a half ``target``), so the presence of
    ``target`` means it is complete. If another process finished first, its result is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be readable like any folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race against another writer
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces ``target`` (``os.replace``) when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
