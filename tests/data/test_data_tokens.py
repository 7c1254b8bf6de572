"""token_contexts: BOS layout, fixed length, determinism, resume and sharding."""

import pytest
import torch

from matryoshka_ext.data.tokens import token_contexts

BOS = 1


class CharTokenizer:
    """HF-style stand-in: one id per character (ids >= 3), BOS = 1."""

    bos_token_id = BOS
    pad_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        assert not add_special_tokens
        return {"input_ids": [[3 + (ord(c) % 200) for c in t] for t in texts]}


DOCS = [f"document {i}: " + "abcdefghij"[: i % 10] * (1 + i % 7) for i in range(60)] + ["", "x" * 100]


def stream(docs: list[str]) -> list[int]:
    """Reference stream: BOS + ids of each non-empty document."""
    out: list[int] = []
    for ids in CharTokenizer()(docs)["input_ids"]:
        if ids:
            out += [BOS, *ids]
    return out


def test_contexts_fixed_length_start_with_bos_and_rebuild_stream() -> None:
    ctx = 16
    contexts = list(token_contexts(DOCS, CharTokenizer(), ctx))
    assert len(contexts) > 10
    assert all(c.shape == (ctx,) and c.dtype == torch.long for c in contexts)
    assert all(int(c[0]) == BOS for c in contexts)
    # Removing the extra BOS of each continuation context gives back a prefix of the reference stream.
    rebuilt: list[int] = []
    ref = stream(DOCS)
    for c in contexts:
        toks = c.tolist()
        if ref[len(rebuilt)] != BOS:  # this context continues a document: its BOS was added
            toks = toks[1:]
        rebuilt += toks
    assert rebuilt == ref[: len(rebuilt)]
    assert len(ref) - len(rebuilt) < ctx  # only the final partial context is dropped
    # One BOS per (non-empty) document in the stream.
    assert ref.count(BOS) == sum(1 for d in DOCS if d)


def test_without_bos_is_plain_concatenation() -> None:
    contexts = list(token_contexts(DOCS, CharTokenizer(), 10, prepend_bos=False))
    flat = [t for c in contexts for t in c.tolist()]
    ref = [t for t in stream(DOCS) if t != BOS]
    assert flat == ref[: len(flat)] and BOS not in flat


def test_deterministic_and_resume() -> None:
    tc = token_contexts(DOCS, CharTokenizer(), 12)
    full = list(tc)
    assert [c.tolist() for c in tc] == [c.tolist() for c in full]  # re-iterable, same result
    for k in (0, 1, 7, len(full)):
        resumed = list(tc.from_position(k))
        assert [c.tolist() for c in resumed] == [c.tolist() for c in full[k:]]
    assert [c.tolist() for c in token_contexts(DOCS, CharTokenizer(), 12, start=5)] == [c.tolist() for c in full[5:]]


@pytest.mark.parametrize("world", [2, 3])
def test_sharding_disjoint_covering_and_resumable(world: int) -> None:
    full = [c.tolist() for c in token_contexts(DOCS, CharTokenizer(), 12)]
    shards = [[c.tolist() for c in token_contexts(DOCS, CharTokenizer(), 12, shard=(r, world))] for r in range(world)]
    for r, shard in enumerate(shards):
        assert shard == full[r::world]  # rank r takes contexts r, r + world, ...
    assert sum(len(s) for s in shards) == len(full)
    resumed = [c.tolist() for c in token_contexts(DOCS, CharTokenizer(), 12, shard=(1, world), start=3)]
    assert resumed == shards[1][3:]


def test_one_shot_iterator_and_validation() -> None:
    tc = token_contexts(iter(DOCS), CharTokenizer(), 12)
    assert len(list(tc)) > 0
    with pytest.raises(RuntimeError):
        list(tc)
    with pytest.raises(ValueError):
        tc.from_position(1)
    with pytest.raises(ValueError):
        token_contexts(DOCS, CharTokenizer(), 12, shard=(2, 2))
    with pytest.raises(ValueError):
        token_contexts(DOCS, CharTokenizer(), 1)
