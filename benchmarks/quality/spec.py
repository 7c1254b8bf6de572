"""What the quality benchmark compares: the rows (implementation x objective x mode) and the grid.

A row is trained by its own code: ``impl`` "ours" uses matryoshka_ext.training; the others run their library's
trainer in .venv-bench (``train_peer``). ``mode`` "transcoder" learns x -> y (MLP input -> MLP output); "sae"
learns x -> x (input site = target site), for peers that only train SAEs, and ours alongside them.

The grid is a list of ``Part``s (rows x seeds x ks x budgets), so that the headline comparison (every row, 3
seeds, k = 32) and the frontier (k = 16, 64, fewer seeds) can have different sizes; ``Grid.jobs`` expands it into
one ordered list of (layer, k, seed, budget, row) jobs, each job's prerequisites first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple


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
PEER_ROWS = [r for r, s in ROWS.items() if s.impl != "ours"]
BUDGETS = ("tokens", "time")


def reference_row(row: str) -> str:
    """The row whose training time sets the equal-wall-clock budget of ``row``: our Matryoshka row of its mode."""
    return "ours" if ROWS[row].mode == "transcoder" else "ours_sae"


class Job(NamedTuple):
    """One trained-and-scored model of the grid."""

    layer: int
    k: int
    seed: int
    budget: str
    row: str


@dataclass
class Part:
    """A block of the grid: every combination of these rows, seeds, ks and budgets, at each of ``layers``."""

    rows: list[str]
    seeds: list[int]
    ks: list[int]
    budgets: list[str]
    layers: list[int] = field(default_factory=lambda: [12])
    splice: str = "last"  # transcoder rows: spliced loss at "all" prefixes, the "last" one, or "none"

    def validate(self) -> None:
        bad = sorted(set(self.rows) - set(ROWS))
        if bad:
            raise ValueError(f"unknown rows {bad}; known: {list(ROWS)}")
        if set(self.budgets) - set(BUDGETS):
            raise ValueError(f"budgets must be among {BUDGETS}, got {self.budgets}")
        if self.splice not in ("all", "last", "none"):
            raise ValueError(f"splice must be all, last or none, got {self.splice!r}")


@dataclass
class Grid:
    """The comparison to run. Budgets: "tokens" (everyone trains ``total_tokens``) and "time" (each peer trains
    until our row's training time of the same mode, layer, k and seed; our rows are the same models as at
    "tokens"). ``total_tokens`` None = the package's TrainConfig default, read at run time."""

    parts: list[Part]
    total_tokens: int | None = None
    splice_tokens: int = 4096
    heldout_tokens: int | None = None  # None = the whole held-out cache

    def to_dict(self) -> dict:
        return asdict(self)

    def jobs(self) -> list[Job]:
        """Every job once, in run order: for each part, layer, k and seed, the equal-token jobs (ours first:
        they set the time budget), then the equal-time ones, each after the equal-token jobs it needs (the
        reference row's time and the peer's own token rate, which sizes its schedules; added here when no
        part lists them)."""
        out: list[Job] = []
        seen: set[Job] = set()

        def add(j: Job) -> None:
            if j not in seen:
                seen.add(j)
                out.append(j)

        for part in self.parts:
            part.validate()
            rows = sorted(part.rows, key=lambda r: (ROWS[r].impl != "ours", list(ROWS).index(r)))
            for layer in part.layers:
                for k in part.ks:
                    for seed in part.seeds:
                        if "tokens" in part.budgets:
                            for r in rows:
                                add(Job(layer, k, seed, "tokens", r))
                        if "time" in part.budgets:
                            for r in rows:
                                if ROWS[r].impl == "ours":
                                    continue  # ours at equal time is ours at equal tokens
                                add(Job(layer, k, seed, "tokens", reference_row(r)))
                                add(Job(layer, k, seed, "tokens", r))
                                add(Job(layer, k, seed, "time", r))
        return out

    def chains(self) -> list[list[Job]]:
        """``jobs()`` split into independent chains, each in run order: one per (layer, k, seed, mode). The
        equal-time jobs of a chain need only its own earlier jobs, so chains may run in parallel."""
        out: dict[tuple, list[Job]] = {}
        for j in self.jobs():
            out.setdefault((j.layer, j.k, j.seed, ROWS[j.row].mode), []).append(j)
        return list(out.values())

    def layers(self) -> list[int]:
        return sorted({layer for part in self.parts for layer in part.layers})

    def splice_of(self, job: Job) -> str:
        """Which prefixes of ``job`` are spliced: the widest setting of any part that lists it ("none" when
        only a prerequisite of another part)."""
        order = ("none", "last", "all")
        best = "none"
        for part in self.parts:
            if job.row in part.rows and job.k in part.ks and job.seed in part.seeds and job.budget in part.budgets \
                    and job.layer in part.layers and order.index(part.splice) > order.index(best):  # fmt: skip
                best = part.splice
        return best if self.splice_tokens else "none"


def reduced_grid() -> Grid:
    """The grid a shared 2-core box affords during development: every row once, seed 0, k = 32, equal tokens."""
    return Grid([Part(list(ROWS), [0], [32], ["tokens"], splice="all")], splice_tokens=4096)


def full_grid() -> Grid:
    """``make quality``: every part of issue 13's comparison, 3 seeds per row (sized in benchmarks/quality/README.md
    from measured per-job times; ``report`` re-estimates it from each results document).

    - every row, layer 12, k = 32, seeds 0-2, equal tokens (the headline table); the spliced loss at every prefix
      for seed 0, at the last prefix elsewhere;
    - equal wall-clock: every peer at k = 32, seeds 0-2, trained for our row's training time;
    - the frontier, k = 16 and 64: the transcoder rows ours, ours_plain and sparsify at seeds 0-2, the SAE rows
      (ours and every SAE peer) at seed 0 (SAELens and dictionary_learning alone take 16 min a seed on a core);
    - the second layer, 15: ours, ours_plain and sparsify at k = 32, seeds 0-2.
    """
    seeds = [0, 1, 2]
    tc_frontier = ["ours", "ours_plain", "sparsify"]
    sae_frontier = ["ours_sae", "saelens_sae", "dl_sae", "sparsify_sae"]
    return Grid(
        [
            Part(list(ROWS), [0], [32], ["tokens"], splice="all"),
            Part(list(ROWS), [1, 2], [32], ["tokens"]),
            Part(PEER_ROWS, seeds, [32], ["time"]),
            Part(tc_frontier, seeds, [16, 64], ["tokens"]),
            Part(sae_frontier, [0], [16, 64], ["tokens"]),
            Part(tc_frontier, seeds, [32], ["tokens"], layers=[15]),
        ]
    )
