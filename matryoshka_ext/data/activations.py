"""Transcoder training data: (input, target) activation pairs from a language model, shuffled in a buffer.

``ActivationSource`` runs the LM (under ``torch.no_grad``, stopping after the last needed block) on batches of
token contexts and returns the activations at the ``Sites`` hooks, with BOS/pad positions removed, in float32.
One forward pass can serve several layers (a list of ``Sites`` -> ``{layer: (x, y)}``).

``ActivationBuffer`` mixes tokens of many contexts: it holds up to ``buffer_tokens`` rows, and whenever it is
half empty it appends freshly computed rows to the remaining ones and applies one seeded random permutation to
them all, then serves batches in that order. Mixing old and new rows keeps consecutive batches from being
dominated by a few documents.

Resume (bit-exact): ``state_dict()`` records

* ``position``: the number of contexts of the source that have been *merged into the buffer* (contexts a
  background thread prefetched but did not merge are not counted, they are simply recomputed),
* the ``torch.Generator`` state that drives the permutations, and the counters,
* the rows still in the buffer (``include_buffer=True``, the default), in serving order.

``load_state_dict()`` restores all of it and restarts the source at ``position``. Because refills always
merge whole source batches of ``batch_contexts`` contexts, the resumed run sees the same forward batches,
the same permutations and the same leftover rows as the uninterrupted run, so its batches are bit-identical
(on CPU, same thread count; on GPU as deterministic as the LM forward itself). The price is checkpoint size:
up to ``buffer_tokens * (d_in + d_out) * 4`` bytes (335 MB for 2**16 tokens of Gemma 3 270M). We chose this
over "checkpoint only at refill boundaries" because rows survive across refills (each refill keeps half), so
no boundary exists at which the buffer content is a function of the position alone. With
``include_buffer=False`` the checkpoint is tiny and the resumed run is still deterministic, but it starts
from an empty buffer at ``position`` (the leftover rows are skipped), so it differs from the uninterrupted
run.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .sites import Sites

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ActivationBatch:
    """Activations of one forward batch; T = number of kept (non-BOS, non-pad) token positions.

    ``acts``: layer -> (x [T, d_in], y [T, d_out]). ``tokens`` [T] token ids, ``context`` [T] index of the
    row's context in the source stream, ``pos`` [T] position inside that context (all int64 on the CPU).
    ``n_contexts``: contexts consumed by this batch.
    """

    acts: dict[int, Pair]
    tokens: torch.Tensor
    context: torch.Tensor
    pos: torch.Tensor
    n_contexts: int

    @property
    def x(self) -> torch.Tensor:
        """Input activations [T, d_in] (single-site sources only)."""
        return self._single()[0]

    @property
    def y(self) -> torch.Tensor:
        """Target activations [T, d_out] (single-site sources only)."""
        return self._single()[1]

    def _single(self) -> Pair:
        if len(self.acts) != 1:
            raise ValueError(f"batch holds {len(self.acts)} layers; use .acts[layer]")
        return next(iter(self.acts.values()))


class ActivationSource:
    """Activations at ``sites`` for successive batches of ``batch_contexts`` token contexts.

    ``contexts``: an iterable of ``LongTensor [ctx]`` (``TokenContexts``, a list, or a ``[N, ctx]`` tensor).
    ``position`` counts the contexts consumed so far, in the same units as ``TokenContexts.start`` (so
    ``seek`` can restart a ``TokenContexts`` cheaply; other re-iterables are re-walked and skipped).
    ``exclude_token_ids``: positions holding these ids are dropped; default: the tokenizer's BOS and pad.
    ``device``: where the activations go (default: the model's device); ``dtype``: their dtype.
    """

    def __init__(
        self,
        model: Any,
        sites: Sites | Sequence[Sites],
        contexts: Iterable[torch.Tensor],
        batch_contexts: int = 8,
        device: str | torch.device | None = None,
        exclude_token_ids: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.multi = not isinstance(sites, Sites)
        self.sites: list[Sites] = sorted(sites if self.multi else [sites], key=lambda s: s.layer)
        layers = [s.layer for s in self.sites]
        if not self.sites or len(set(layers)) != len(layers):
            raise ValueError(f"sites must be non-empty with one Sites per layer, got layers {layers}")
        missing = [h for s in self.sites for h in s.hooks if h not in model.hook_dict]
        if missing:
            raise ValueError(f"hooks not in the model: {missing}")
        if batch_contexts < 1:
            raise ValueError(f"batch_contexts must be >= 1, got {batch_contexts}")
        if exclude_token_ids is None:
            tok = getattr(model, "tokenizer", None)
            if tok is None:
                raise ValueError("model has no tokenizer: pass exclude_token_ids (e.g. [bos_id])")
            exclude_token_ids = [i for i in (tok.bos_token_id, tok.pad_token_id) if i is not None]
        self.exclude = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
        self.contexts = contexts
        self.batch_contexts = batch_contexts
        self.device = torch.device(device if device is not None else model.cfg.device)
        self.dtype = dtype
        self.model_device = torch.device(model.cfg.device)
        self.names = [h for s in self.sites for h in s.hooks]
        self.stop_at_layer = self.sites[-1].layer + 1  # nothing after the last needed block is computed
        self.start = int(getattr(contexts, "start", 0))
        self.position = self.start
        self._it: Iterator[torch.Tensor] | None = None
        self._lock = threading.Lock()

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self.sites]

    def dims(self) -> dict[int, tuple[int, int]]:
        """layer -> (d_in, d_out), read from the hook shapes of a 2-token forward."""
        names = self.names
        with torch.no_grad():
            _, cache = self.model.run_with_cache(
                torch.zeros(1, 2, dtype=torch.long, device=self.model_device),
                names_filter=names,
                stop_at_layer=self.stop_at_layer,
            )
        return {s.layer: (cache[s.input_hook].shape[-1], cache[s.output_hook].shape[-1]) for s in self.sites}

    @property
    def can_seek(self) -> bool:
        """Whether ``seek`` works: the contexts are re-iterable (not a one-shot iterator)."""
        if hasattr(self.contexts, "from_position"):
            return not getattr(self.contexts, "_one_shot", False)
        return iter(self.contexts) is not self.contexts

    def seek(self, position: int) -> None:
        """Continue from ``position`` (contexts consumed), e.g. when resuming."""
        with self._lock:
            if position == self.position and self._it is not None:
                return
            if hasattr(self.contexts, "from_position"):
                self._it = iter(self.contexts.from_position(position))
            else:
                it = iter(self.contexts)
                if it is self.contexts:
                    raise ValueError("cannot seek a one-shot iterator of contexts; pass a re-iterable")
                self._it = itertools.islice(it, position - self.start, None)
            self.position = position

    def next_batch(self) -> ActivationBatch:
        """Activations of the next ``batch_contexts`` contexts (fewer at the end); StopIteration when done."""
        with self._lock:
            if self._it is None:
                self._it = iter(self.contexts)
            rows = list(itertools.islice(self._it, self.batch_contexts))
            if not rows:
                raise StopIteration
            first = self.position
            self.position += len(rows)
        return self._compute(torch.stack(rows).cpu(), first)

    def _compute(self, tokens: torch.Tensor, first: int) -> ActivationBatch:
        """tokens [B, ctx] (first context has stream index ``first``) -> ActivationBatch."""
        b, ctx = tokens.shape
        keep = ~torch.isin(tokens, self.exclude)  # [B, ctx]
        with torch.no_grad():
            _, cache = self.model.run_with_cache(
                tokens.to(self.model_device), names_filter=self.names, stop_at_layer=self.stop_at_layer
            )
        keep_dev = keep.to(self.model_device)
        acts = {
            s.layer: tuple(cache[h][keep_dev].to(device=self.device, dtype=self.dtype) for h in s.hooks)
            for s in self.sites
        }
        context = torch.arange(first, first + b).unsqueeze(1).expand(b, ctx)
        pos = torch.arange(ctx).unsqueeze(0).expand(b, ctx)
        return ActivationBatch(acts, tokens[keep], context[keep], pos[keep], b)

    def __iter__(self) -> Iterator[ActivationBatch]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return


class ActivationBuffer:
    """Shuffling buffer of activation rows; iterate it for ``(x [B, d_in], y [B, d_out])`` batches.

    For a multi-site source each item is ``{layer: (x, y)}`` (all layers share the row order). See the module
    docstring for the refill rule and for what ``state_dict`` / ``load_state_dict`` restore. Served tensors
    are views into the buffer: treat them as read-only. Iteration ends when the source is exhausted and fewer
    than ``batch_size`` rows remain (the remainder is dropped so every batch has exactly ``batch_size`` rows).
    ``background=True`` computes the next source batches in a thread (the LM forward releases the GIL).
    """

    def __init__(
        self,
        source: ActivationSource,
        buffer_tokens: int = 2**16,
        batch_size: int = 4096,
        seed: int = 0,
        device: str | torch.device | None = None,
        background: bool = False,
        dtype: torch.dtype = torch.float32,
        prefetch: int = 2,
    ) -> None:
        if not 1 <= batch_size <= buffer_tokens // 2:
            raise ValueError(f"need 1 <= batch_size <= buffer_tokens // 2, got {batch_size}, {buffer_tokens}")
        self.source = source
        self.buffer_tokens = buffer_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device(source.device)
        self.dtype = dtype
        self.background = background
        self.prefetch = prefetch
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator: same stream on every device
        self.position = source.position  # contexts merged into the buffer
        self.tokens_served = 0
        self.exhausted = False
        self._store: list[torch.Tensor] = []  # [x_l0, y_l0, x_l1, y_l1, ...], rows [head:] still to serve
        self._head = 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # ----------------------------------------------------------------------------------------- serving
    def __len__(self) -> int:
        """Rows currently waiting in the buffer."""
        return (self._store[0].shape[0] - self._head) if self._store else 0

    def __iter__(self) -> ActivationBuffer:
        return self

    def __next__(self) -> Pair | dict[int, Pair]:
        if not self.exhausted and len(self) <= self.buffer_tokens // 2:
            self._refill()
        if len(self) < self.batch_size:
            raise StopIteration
        h, b = self._head, self.batch_size
        cols = [t[h : h + b] for t in self._store]
        self._head += b
        self.tokens_served += b
        if not self.source.multi:
            return cols[0], cols[1]
        return {layer: (cols[2 * i], cols[2 * i + 1]) for i, layer in enumerate(self.source.layers)}

    def _refill(self) -> None:
        """Merge new source batches until ``buffer_tokens`` rows are held, then permute all rows."""
        parts = [[t[self._head :]] for t in self._store] or [[] for _ in range(2 * len(self.source.sites))]
        held = len(self)
        while held < self.buffer_tokens:
            batch = self._next_source_batch()
            if batch is None:
                self.exhausted = True
                break
            for i, layer in enumerate(self.source.layers):
                x, y = batch.acts[layer]
                parts[2 * i].append(x.to(self.device, self.dtype))
                parts[2 * i + 1].append(y.to(self.device, self.dtype))
            held += batch.tokens.numel()
            self.position += batch.n_contexts
        perm = torch.randperm(held, generator=self.generator).to(self.device)
        self._store = [torch.cat(p).index_select(0, perm) for p in parts]
        self._head = 0

    def _next_source_batch(self) -> ActivationBatch | None:
        if not self.background:
            try:
                return self.source.next_batch()
            except StopIteration:
                return None
        if self._thread is None:
            self._start_thread()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        if item is None:
            self._thread = None
        return item

    # ----------------------------------------------------------------------------------------- background
    def _start_thread(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, args=(self._queue,), daemon=True)
        self._thread.start()

    def _worker(self, q: queue.Queue) -> None:
        def put(item: Any) -> bool:
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            while not self._stop.is_set():
                try:
                    batch = self.source.next_batch()
                except StopIteration:
                    put(None)
                    return
                if not put(batch):
                    return
        except BaseException as err:  # hand errors to the consumer instead of dying silently
            put(err)

    def close(self) -> None:
        """Stop the background thread (prefetched batches are discarded; ``position`` is unaffected)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    # ----------------------------------------------------------------------------------------- resume
    def state_dict(self, include_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to resume; with ``include_buffer`` the resumed stream is bit-identical."""
        return {
            "version": 1,
            "position": self.position,
            "rng_state": self.generator.get_state(),
            "seed": self.seed,
            "buffer_tokens": self.buffer_tokens,
            "batch_size": self.batch_size,
            "tokens_served": self.tokens_served,
            "exhausted": self.exhausted,
            "layers": self.source.layers,
            "buffer": [t[self._head :].to("cpu", copy=True) for t in self._store] if include_buffer else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``: restart the source at the recorded position, restore RNG and rows."""
        if state.get("version") != 1:
            raise ValueError(f"unknown buffer state version {state.get('version')!r}")
        if list(state["layers"]) != self.source.layers:
            raise ValueError(f"state is for layers {state['layers']}, this source has {self.source.layers}")
        self.close()
        self.position = int(state["position"])
        self.source.seek(self.position)
        self.generator.set_state(state["rng_state"])
        self.tokens_served = int(state["tokens_served"])
        self.exhausted = bool(state["exhausted"])
        rows = state["buffer"]
        self._store = [t.to(self.device, self.dtype) for t in rows] if rows else []
        self._head = 0


def estimate_scales(
    source: ActivationSource, n_tokens: int = 2**14, rewind: bool = True
) -> tuple[float, float] | dict[int, tuple[float, float]]:
    """Scalars (s_in, s_out) such that ``mean ||s_in x||^2 = mean ||s_out y||^2 = 1`` over ``n_tokens`` rows.

    Returns a dict layer -> (s_in, s_out) for a multi-site source. Gemma needs this: at layer 6 of Gemma 3
    270M the MLP output's norm is ~2,960 against ~25 for the normalized input. With ``rewind`` the source is
    put back at its starting position afterwards (if ``source.can_seek``), so training sees the same data.
    """
    start = source.position
    sums = {layer: torch.zeros(2, dtype=torch.float64) for layer in source.layers}
    seen = 0
    for batch in source:
        take = min(batch.tokens.numel(), n_tokens - seen)
        for layer, (x, y) in batch.acts.items():
            sums[layer][0] += x[:take].double().pow(2).sum().cpu()
            sums[layer][1] += y[:take].double().pow(2).sum().cpu()
        seen += take
        if seen >= n_tokens:
            break
    if seen == 0:
        raise ValueError("source produced no activations")
    if rewind and source.can_seek:
        source.seek(start)
    scales = {layer: tuple(float((seen / s).sqrt()) for s in sums[layer]) for layer in source.layers}
    return scales if source.multi else scales[source.layers[0]]
