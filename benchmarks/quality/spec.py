"""What the quality benchmark compares: the rows (implementation x objective x mode) and the grid.

A row is trained by its own code: ``impl`` "ours" uses matryoshka_ext.training; the others run their library's
trainer in .venv-bench (``train_peer``). ``mode`` "transcoder" learns x -> y (MLP input -> MLP output); "sae"
learns x -> x (input site = target site), for peers that only train SAEs, and ours alongside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Row:
    """One implementation/objective. ``variant`` names what differs from the implementation's default."""

    name: str
    impl: str  # "ours" | "saelens" | "dictionary_learning" | "sparsify"
    mode: str  # "transcoder" | "sae"
    variant: str = "matryoshka"  # ours: matryoshka | plain | seed | skip; sparsify: topk | skip
    about: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("ours", "ours", "transcoder", "matryoshka", "our Matryoshka BatchTopK transcoder, default TrainConfig"),
        Row("ours_plain", "ours", "transcoder", "plain", "ours, one group (plain BatchTopK, not nested)"),
        Row("ours_seed", "ours", "transcoder", "seed", "ours, only the full reconstruction trained (seed style)"),
        Row("ours_skip", "ours", "transcoder", "skip", "ours + affine skip connection"),
        Row("sparsify", "sparsify", "transcoder", "topk", "sparsify SparseCoder(transcode=True), TopK, flat"),
        Row("sparsify_skip", "sparsify", "transcoder", "skip", "sparsify transcoder with its skip connection"),
        Row("ours_sae", "ours", "sae", "matryoshka", "ours as a Matryoshka SAE (y = x)"),
        Row("ours_plain_sae", "ours", "sae", "plain", "ours as a plain BatchTopK SAE (y = x)"),
        Row("saelens_sae", "saelens", "sae", "matryoshka", "SAELens MatryoshkaBatchTopKTrainingSAE + SAETrainer"),
        Row("dl_sae", "dictionary_learning", "sae", "matryoshka", "dictionary_learning MatryoshkaBatchTopKTrainer"),
        Row("sparsify_sae", "sparsify", "sae", "topk", "sparsify SparseCoder (SAE), TopK, flat"),
    )
}


@dataclass
class Grid:
    """The comparison to run. ``budgets``: "tokens" (everyone trains ``total_tokens``) and/or "time" (each
    peer trains until our row's training time of the same mode, k and seed)."""

    rows: list[str] = field(default_factory=lambda: list(ROWS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ks: list[int] = field(default_factory=lambda: [16, 32, 64])
    budgets: list[str] = field(default_factory=lambda: ["tokens", "time"])
    layers: list[int] = field(default_factory=lambda: [12])
    total_tokens: int | None = None  # None = the lead's TrainConfig default, read at run time
    splice_tokens: int = 8192
    heldout_tokens: int | None = None  # None = the whole held-out cache

    def to_dict(self) -> dict:
        return asdict(self)


def reduced_grid() -> Grid:
    """The grid a shared 2-core box affords during development: 1 seed, k = 32, equal tokens."""
    return Grid(seeds=[0], ks=[32], budgets=["tokens"], splice_tokens=4096)
