"""Text sources, all read through HF ``datasets``; each yields plain strings (one per document).

* ``"offline"``: real text from Debian packages, no hub needed (``offline_corpus``): Jane Austen's six novels
  (``r-cran-janeaustenr``, one document per chapter) and the Python 3.11 documentation's reST sources
  (``python3.11-doc``, one document per group of paragraphs up to ~6,000 characters). A fixed 3 % of the
  documents (chosen by a hash of their id, so the same everywhere) forms the ``"eval"`` split.
  ``"offline:austen"`` / ``"offline:pydocs"`` select one source.
* local files: ``.txt`` (one document per paragraph), ``.jsonl`` / ``.json``, ``.parquet``, or a folder of
  them.
* hub datasets (``"HuggingFaceFW/fineweb-edu"``...), streamed by default. Without a reachable hub they fail
  at once with instructions rather than retrying.

Train/eval for sources that have a single split (local files, fineweb-edu): ``split="train"`` / ``"eval"``
partition the documents by a hash of their text (``eval_fraction``); ``split="all"`` takes everything and any
other split name is passed to ``load_dataset`` as is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._cache import atomic_dir, atomic_file, cache_root

OFFLINE_SOURCES = ("austen", "pydocs")
_DEBS = {"austen": "r-cran-janeaustenr", "pydocs": "python3.11-doc"}
_AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
_PYDOCS_DIR = "usr/share/doc/python3.11/html/_sources"
_CORPUS_VERSION = "debian-v1"
OFFLINE_EVAL_FRACTION = 0.03  # ~9 Austen chapters + ~80 doc chunks: enough held-out text for eval metrics
_PYDOCS_CHUNK_CHARS = 6000
_LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --------------------------------------------------------------------------------------------- hashing
def _hash_unit(key: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) from ``key`` (blake2b; identical on every platform)."""
    digest = hashlib.blake2b((salt + key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_eval_document(key: str, eval_fraction: float) -> bool:
    """True for the fixed ``eval_fraction`` of keys (document ids or texts) that form the eval split."""
    return _hash_unit(key, "eval-split:") < eval_fraction


# --------------------------------------------------------------------------------------------- Debian corpus
def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


def _download_debs(packages: Sequence[str], dest: Path) -> list[Path]:
    """``apt-get download`` the packages into ``dest`` (``apt-get update`` first if lists are missing)."""
    missing = [p for p in packages if not list(dest.glob(f"{p}_*.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise RuntimeError(
                f"the offline corpus needs Debian's apt-get to download {missing}; not found on this system. "
                "Use text_dataset(<local .txt/.jsonl>) or a hub dataset instead."
            )
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".tmp-debs-") as tmp:
            result = _run(["apt-get", "download", *missing], cwd=Path(tmp))
            if result.returncode != 0:  # usually "Unable to locate package": no package lists yet
                update = _run(["apt-get", "update"])
                result = _run(["apt-get", "download", *missing], cwd=Path(tmp))
                if result.returncode != 0:
                    raise RuntimeError(
                        f"apt-get download {' '.join(missing)} failed:\n{result.stderr.strip()}\n"
                        f"(apt-get update said: {update.stderr.strip()[-500:]})"
                    )
            dest.mkdir(parents=True, exist_ok=True)
            for deb in Path(tmp).glob("*.deb"):
                os.replace(deb, dest / deb.name)  # whole files only: a killed download leaves nothing here
    return [sorted(dest.glob(f"{p}_*.deb"))[-1] for p in packages]


def _unpack(deb: Path, dest: Path) -> None:
    result = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")


def _read_r_lazyload(data_dir: Path) -> dict[str, Any]:
    """Objects of an R lazy-load database (``Rdata.rdx`` index + ``Rdata.rdb`` blocks), via ``rdata``.

    The index is a gzip-compressed serialized R list whose ``variables`` entry maps each object name to
    (offset, length) in the .rdb; each block there is a 4-byte big-endian uncompressed size followed by zlib
    data holding one serialized R object.
    """
    import rdata

    def parse(raw: bytes) -> Any:
        with warnings.catch_warnings():  # rdata warns that raw serialized data has no file-type header
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw, extension="rds"))

    index = parse(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        block = blob[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack(">I", block[:4])
        raw = zlib.decompress(block[4:])
        if len(raw) != size:
            raise ValueError(f"corrupt R lazy-load block for {name!r}: {len(raw)} bytes, expected {size}")
        objects[str(name)] = parse(raw)
    return objects


def _unwrap(lines: Sequence[str]) -> str:
    """Hard-wrapped lines -> paragraphs (lines joined by spaces) separated by blank lines."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _austen_documents(root: Path) -> Iterator[dict[str, str]]:
    """One document per chapter; text before the first chapter (title page) is prefixed to it."""
    for book, lines in sorted(_read_r_lazyload(root / _AUSTEN_DATA).items()):
        lines = [str(x) for x in lines]
        starts = [i for i, line in enumerate(lines) if line.strip().upper().startswith("CHAPTER ")]
        if not starts:
            raise ValueError(f"no chapter headings found in janeaustenr's {book!r}")
        bounds = [0, *starts[1:], len(lines)]
        for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            yield {"text": _unwrap(lines[a:b]), "source": f"austen/{book}/{n:03d}"}


def _pydocs_documents(root: Path) -> Iterator[dict[str, str]]:
    """Each reST source page, cut at blank lines into chunks of at most ~6,000 characters."""
    base = root / _PYDOCS_DIR
    files = sorted(base.rglob("*.txt"))
    if not files:
        raise ValueError(f"no reST sources under {base}")
    for path in files:
        rel = path.relative_to(base).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks, current, size = [], [], 0
        for para in text.split("\n\n"):
            if current and size + len(para) > _PYDOCS_CHUNK_CHARS:
                chunks.append("\n\n".join(current))
                current, size = [], 0
            current.append(para)
            size += len(para) + 2
        if current:
            chunks.append("\n\n".join(current))
        for n, chunk in enumerate(c for c in chunks if c.strip()):
            yield {"text": chunk.strip("\n"), "source": f"pydocs/{rel}#{n}"}


_PARSERS: dict[str, Callable[[Path], Iterator[dict[str, str]]]] = {
    "austen": _austen_documents,
    "pydocs": _pydocs_documents,
}


def _source_documents(source: str, root: Path) -> Path:
    """All documents of one Debian source as JSONL (downloaded, unpacked and parsed once, then cached)."""
    out = root / f"{source}.jsonl"
    if out.is_file():
        return out
    (deb,) = _download_debs([_DEBS[source]], root / "debs")
    with tempfile.TemporaryDirectory(dir=root, prefix=f".tmp-unpack-{source}-") as tmp:
        _unpack(deb, Path(tmp))
        with atomic_file(out) as part, part.open("w", encoding="utf-8") as f:
            for doc in _PARSERS[source](Path(tmp)):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return out


def offline_corpus(
    which: str | Sequence[str] = OFFLINE_SOURCES,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Path of a JSONL (``{"text", "source"}`` per line) with the offline corpus' ``split`` ("train"/"eval").

    First call downloads the .deb files (``apt-get download``), unpacks them (``dpkg-deb -x``) and parses
    them; everything is written atomically under ``<cache>/corpus/``. Documents of the mixed sources are
    interleaved in a fixed pseudo-random order (hash of the id) so a stream does not run one source after
    the other.
    """
    names = (which,) if isinstance(which, str) else tuple(which)
    names = tuple(sorted(set(names)))
    if not names or any(n not in OFFLINE_SOURCES for n in names):
        raise ValueError(f"which must name sources among {OFFLINE_SOURCES}, got {which!r}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    root = cache_root(cache_dir) / "corpus" / _CORPUS_VERSION
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "+".join(names)
    if not (folder / f"{split}.jsonl").is_file():
        docs: list[dict[str, str]] = []
        for name in names:
            with _source_documents(name, root).open(encoding="utf-8") as f:
                docs.extend(json.loads(line) for line in f)
        docs.sort(key=lambda d: _hash_unit(d["source"], "order:"))
        with atomic_dir(folder) as tmp:
            for part in ("train", "eval"):
                with (tmp / f"{part}.jsonl").open("w", encoding="utf-8") as f:
                    for d in docs:
                        if is_eval_document(d["source"], OFFLINE_EVAL_FRACTION) == (part == "eval"):
                            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return folder / f"{split}.jsonl"


# --------------------------------------------------------------------------------------------- datasets
class TextSource:
    """A re-iterable stream of document strings; every ``iter()`` restarts from the first document.

    ``factory()`` returns a fresh HF ``Dataset`` / ``IterableDataset``; rows whose ``text_field`` is empty or
    that fall outside the wanted hash split (``keep``) are skipped.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        text_field: str = "text",
        keep: Callable[[str], bool] | None = None,
        description: str = "",
    ) -> None:
        self.factory = factory
        self.text_field = text_field
        self.keep = keep
        self.description = description

    def __iter__(self) -> Iterator[str]:
        dataset = self.factory()
        for batch in dataset.iter(batch_size=256):
            if self.text_field not in batch:
                raise KeyError(f"{self.description}: no field {self.text_field!r}; fields: {sorted(batch)}")
            for text in batch[self.text_field]:
                if text and text.strip() and (self.keep is None or self.keep(text)):
                    yield text

    def __repr__(self) -> str:
        return f"TextSource({self.description})"


def _hash_split(split: str, eval_fraction: float) -> tuple[str, Callable[[str], bool] | None]:
    """(split to load, filter) for a source whose only split is ``train``."""
    if split == "train":
        return "train", lambda t: not is_eval_document(t, eval_fraction)
    if split == "eval":
        return "train", lambda t: is_eval_document(t, eval_fraction)
    if split == "all":
        return "train", None
    return split, None


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_BUILDERS)
    builders = {_LOCAL_BUILDERS.get(p.suffix) for p in files}
    if not files or None in builders or len(builders) != 1:
        raise ValueError(f"{path}: expected .txt, .jsonl/.json or .parquet files of one kind, got {files[:5]}")
    return builders.pop(), [str(p) for p in files]


def text_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    streaming: bool = True,
    text_field: str = "text",
    cache_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    eval_fraction: float = 0.005,
) -> TextSource:
    """Documents of a text source as a re-iterable ``TextSource`` of strings.

    ``name_or_path``: ``"offline"`` / ``"offline:austen"`` / ``"offline:pydocs"``, a local file or folder,
    or a hub dataset id (``subset`` = its config, e.g. ``"sample-10BT"`` for fineweb-edu). ``cache_dir``: the
    work folder (HF ``datasets`` keeps its cache in ``<cache>/datasets``). Splits: see the module docstring.
    """
    from datasets import load_dataset

    name = str(name_or_path)
    hf_cache = str(cache_root(cache_dir) / "datasets")
    if name == "offline" or name.startswith("offline:"):
        which = name.split(":", 1)[1].split("+") if ":" in name else list(OFFLINE_SOURCES)
        path = str(offline_corpus(which, split, cache_dir))
        factory = lambda: load_dataset(  # noqa: E731
            "json", data_files=path, split="train", streaming=streaming, cache_dir=hf_cache
        )
        return TextSource(factory, "text", None, f"{name} [{split}]")
    local = Path(name).expanduser()
    if local.exists():
        builder, files = _local_files(local)
        load_split, keep = _hash_split(split, eval_fraction)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        factory = lambda: load_dataset(  # noqa: E731
            builder, data_files=files, split=load_split, streaming=streaming, cache_dir=hf_cache, **kwargs
        )
        return TextSource(factory, text_field, keep, f"{local} [{split}]")
    offline = not _ensure_hub_dataset_available(name, streaming)
    load_split, keep = _hash_split(split, eval_fraction)

    def factory() -> Any:
        try:
            return load_dataset(name, subset, split=load_split, streaming=streaming, cache_dir=hf_cache)
        except Exception as err:
            if not offline:
                raise
            raise RuntimeError(
                f"Dataset {name!r} is not in the local datasets cache and the hub is unreachable. "
                + _DATASET_RECIPE.format(name=name)
            ) from err

    return TextSource(factory, text_field, keep, f"{name}{'/' + subset if subset else ''} [{split}]")


_DATASET_RECIPE = (
    "On a machine with network access download a part of it, e.g.\n"
    "    huggingface-cli download --repo-type dataset {name} --include 'sample/10BT/000_*' --local-dir DIR\n"
    "then pass DIR (a folder of .parquet/.jsonl files) as the dataset path here. "
    "Offline alternative: text_dataset('offline')."
)


def _ensure_hub_dataset_available(name: str, streaming: bool) -> bool:
    """True if the hub is reachable. Else switch to cache-only mode (non-streaming: a prepared copy may be
    cached) or, when streaming, fail at once with instructions instead of letting the client retry."""
    from .models import _force_hub_offline, hub_reachable

    if hub_reachable():
        return True
    if not streaming:
        _force_hub_offline()
        return False
    raise RuntimeError(
        f"Dataset {name!r} cannot be streamed: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE set).\n"
        + _DATASET_RECIPE.format(name=name)
    )
