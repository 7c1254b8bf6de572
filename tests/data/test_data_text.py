"""Text sources: local files through HF datasets, hash splits, the R lazy-load parser, hub fail-fast."""

import gzip
import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from matryoshka_ext.data import text as T

pytest.importorskip("datasets")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MATRYOSHKA_EXT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("streaming", [True, False])
def test_local_txt_by_paragraph(tmp_path, cache, streaming) -> None:
    paras = [f"Paragraph {i} line one.\nline two of {i}." for i in range(200)]
    (tmp_path / "a.txt").write_text("\n\n".join(paras) + "\n")
    src = T.text_dataset(tmp_path / "a.txt", split="all", streaming=streaming)
    docs = list(src)
    assert [d.strip() for d in docs] == paras
    assert list(src) == docs  # re-iterable, same order
    train = list(T.text_dataset(tmp_path / "a.txt", split="train", streaming=streaming, eval_fraction=0.2))
    ev = list(T.text_dataset(tmp_path / "a.txt", split="eval", streaming=streaming, eval_fraction=0.2))
    assert sorted(train + ev) == sorted(docs) and not set(train) & set(ev)
    assert 10 < len(ev) < 70


def test_local_jsonl_folder_and_text_field(tmp_path, cache) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(2):
        rows = [{"body": f"doc {k}-{i}", "n": i} for i in range(5)] + [{"body": "", "n": -1}]
        (folder / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(T.text_dataset(folder, split="all", text_field="body"))
    assert docs == [f"doc {k}-{i}" for k in range(2) for i in range(5)]  # empty documents skipped
    with pytest.raises(KeyError):
        list(T.text_dataset(folder, split="all"))  # no "text" field


def _lazyload_db(folder: Path, objects: dict) -> None:
    """Write an R lazy-load database the way R does: gzip index + (4-byte length, zlib) blocks."""
    import numpy as np
    from rdata.conversion import convert_python_to_r_data
    from rdata.unparser import unparse_data

    blob, index = b"", {}
    for name, value in objects.items():
        raw = unparse_data(convert_python_to_r_data(np.array(value)))
        block = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = np.array([len(blob), len(block)], dtype=np.int32)
        blob += block
    folder.mkdir(parents=True)
    (folder / "Rdata.rdb").write_bytes(blob)
    idx = {"variables": index, "references": {}, "compressed": True}
    (folder / "Rdata.rdx").write_bytes(gzip.compress(unparse_data(convert_python_to_r_data(idx))))


def test_austen_parser_on_synthetic_lazyload(tmp_path) -> None:
    pytest.importorskip("rdata")
    book = (
        "EMMA||By Jane Austen||CHAPTER I||Emma Woodhouse, handsome,|clever, and rich.||Second paragraph.||"
        "CHAPTER II||Mr. Weston was a native|of Highbury."
    ).split("|")
    _lazyload_db(tmp_path / T._AUSTEN_DATA, {"emma": book, "other": ["Chapter 1", "Text."]})
    objs = T._read_r_lazyload(tmp_path / T._AUSTEN_DATA)
    assert [str(x) for x in objs["emma"]] == book
    docs = list(T._austen_documents(tmp_path))
    assert [d["source"] for d in docs] == ["austen/emma/000", "austen/emma/001", "austen/other/000"]
    assert docs[0]["text"] == (
        "EMMA\n\nBy Jane Austen\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.\n\nSecond paragraph."
    )
    assert docs[1]["text"] == "CHAPTER II\n\nMr. Weston was a native of Highbury."


def test_eval_split_is_a_fixed_hash_set() -> None:
    keys = [f"doc-{i}" for i in range(5000)]
    chosen = [k for k in keys if T.is_eval_document(k, 0.03)]
    assert chosen == [k for k in keys if T.is_eval_document(k, 0.03)]
    assert 100 < len(chosen) < 200


def test_hub_dataset_fails_fast_offline(cache, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="huggingface-cli download --repo-type dataset"):
        T.text_dataset("HuggingFaceFW/fineweb-edu", streaming=True)
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_offline_corpus_real_debian_packages() -> None:
    """Downloads the two .deb files (~14 MB) once into the work folder; later runs read the cache."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs Debian's apt-get and dpkg-deb")
    train, ev = T.offline_corpus(split="train"), T.offline_corpus(split="eval")
    rows = [json.loads(line) for line in train.open()]
    rows_ev = [json.loads(line) for line in ev.open()]
    sources = {r["source"] for r in rows}
    assert not sources & {r["source"] for r in rows_ev}
    assert len(rows) > 2000 and 40 < len(rows_ev) < 150
    assert sum(s.startswith("austen/") for s in sources) > 250
    assert any("It is a truth universally acknowledged" in r["text"] for r in rows + rows_ev)
    docs = list(T.text_dataset("offline:austen", split="eval"))
    assert docs and all(
        d.startswith(("CHAPTER", "Chapter", "EMMA", "PRIDE", "SENSE", "MANSFIELD", "NORTHANGER", "Persuasion"))
        for d in docs
    )
