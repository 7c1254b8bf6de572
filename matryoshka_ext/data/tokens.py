"""Documents -> fixed-length token contexts, deterministically, with resume and per-rank sharding.

Layout of the token stream (``prepend_bos=True``): every document is tokenized without special tokens and
preceded by BOS; documents are concatenated and cut into contexts of ``context_size`` tokens. A context that
would start in the middle of a document gets a BOS of its own (and takes one token less from the stream), so
**every context starts with BOS**: Gemma-style models treat position 0 as an attention sink and produce
outlier activations there when it is not BOS. ``ActivationSource`` drops all BOS positions anyway.
The final incomplete context is dropped, so every context has exactly ``context_size`` tokens.

Positions: contexts are numbered 0, 1, 2, ... over the whole stream; rank ``r`` of ``world`` takes contexts
``r, r + world, r + 2 world, ...`` (disjoint, and together covering the stream). ``start=k`` skips the first k
contexts *of this rank* (the number a resumed run has already consumed). Skipping re-tokenizes the skipped
text (cheap next to the LM forward) but builds no tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

_COMPACT_AT = 1 << 16  # drop consumed tokens from the pending list once this many have piled up


class TokenContexts:
    """Re-iterable stream of ``LongTensor [context_size]`` contexts (see the module docstring for layout).

    ``texts`` must be re-iterable (a list, a ``TextSource``...) for ``from_position`` / repeated iteration;
    a one-shot iterator works for a single pass. ``tokenizer`` follows the HF interface:
    ``tokenizer(list_of_str, add_special_tokens=False)["input_ids"] -> list[list[int]]`` and ``bos_token_id``;
    a ``HookedTransformer`` is accepted too (its ``.tokenizer`` is used).
    """

    def __init__(
        self,
        texts: Iterable[str],
        tokenizer: Any,
        context_size: int,
        prepend_bos: bool = True,
        shard: tuple[int, int] = (0, 1),
        start: int = 0,
        bos_token_id: int | None = None,
        tokenize_batch: int = 64,
    ) -> None:
        if hasattr(tokenizer, "to_tokens") and hasattr(tokenizer, "cfg"):  # a HookedTransformer
            tokenizer = tokenizer.tokenizer
        rank, world = shard
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
        if context_size < 2:
            raise ValueError(f"context_size must be >= 2, got {context_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if bos_token_id is None:
            bos_token_id = getattr(tokenizer, "bos_token_id", None)
        if prepend_bos and bos_token_id is None:
            raise ValueError("prepend_bos=True needs a BOS id: the tokenizer has none, pass bos_token_id")
        self.texts = texts
        self.tokenizer = tokenizer
        self.context_size = int(context_size)
        self.prepend_bos = prepend_bos
        self.shard = (rank, world)
        self.start = int(start)
        self.bos_token_id = bos_token_id
        self.tokenize_batch = tokenize_batch
        self._one_shot = iter(texts) is texts  # a plain iterator can be walked only once
        self._used = False

    def from_position(self, start: int) -> TokenContexts:
        """The same stream, skipping the first ``start`` contexts of this rank (resume)."""
        if self._one_shot:
            raise ValueError("cannot restart a stream over a one-shot iterator; pass a re-iterable `texts`")
        return TokenContexts(
            self.texts,
            self.tokenizer,
            self.context_size,
            self.prepend_bos,
            self.shard,
            start,
            self.bos_token_id,
            self.tokenize_batch,
        )

    def _documents(self) -> Iterator[list[int]]:
        """Token ids of each document (no special tokens), tokenized in batches for the fast tokenizers."""
        batch: list[str] = []
        for text in self.texts:
            batch.append(text)
            if len(batch) == self.tokenize_batch:
                yield from self.tokenizer(batch, add_special_tokens=False)["input_ids"]
                batch = []
        if batch:
            yield from self.tokenizer(batch, add_special_tokens=False)["input_ids"]

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._one_shot:
            if self._used:
                raise RuntimeError("this TokenContexts wraps a one-shot iterator and was already iterated")
            self._used = True
        rank, world = self.shard
        first = self.start * world  # global index of this rank's first wanted context (minus rank)
        ctx, bos, with_bos = self.context_size, self.bos_token_id, self.prepend_bos
        pending: list[int] = []
        head = 0  # pending[head:] is not yet in any context
        index = 0  # global context index
        for ids in self._documents():
            if not ids:
                continue  # empty documents would only add stray BOS tokens
            if with_bos:
                pending.append(bos)
            pending.extend(ids)
            while len(pending) > head:
                fresh = not with_bos or pending[head] == bos  # starts at a document (or needs no BOS)
                need = ctx if fresh else ctx - 1
                if len(pending) - head < need:
                    break
                if index >= first and index % world == rank:
                    chunk = pending[head : head + need] if fresh else [bos, *pending[head : head + need]]
                    yield torch.tensor(chunk, dtype=torch.long)
                head += need
                index += 1
            if head >= _COMPACT_AT:
                del pending[:head]
                head = 0


def token_contexts(
    texts: Iterable[str],
    tokenizer: Any,
    context_size: int,
    prepend_bos: bool = True,
    shard: tuple[int, int] | Sequence[int] = (0, 1),
    start: int = 0,
    bos_token_id: int | None = None,
) -> TokenContexts:
    """Deterministic ``LongTensor [context_size]`` contexts from documents; see ``TokenContexts``.

    ``shard=(rank, world)``: this rank's share (contexts rank, rank+world, ...). ``start``: number of this
    rank's contexts already consumed (resume position).
    """
    return TokenContexts(texts, tokenizer, context_size, prepend_bos, tuple(shard), start, bos_token_id)
