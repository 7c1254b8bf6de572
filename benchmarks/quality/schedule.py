"""How long the grid's jobs take and how they are shared among parallel workers (``run.py --workers``).

A job's cost is read off the measured entries of a results document (training + scoring + spliced loss), so the
estimate that sizes ``make quality`` and the shares the workers get come from the same numbers. Jobs are split
into independent chains (``Grid.chains``) and the chains dealt out longest first to the least loaded worker.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from .spec import ROWS, Grid, Job, reference_row

PEER_START_S = 15.0  # interpreter start + cache read-in of one train_peer subprocess (measured 8-20 s)
UNMEASURED_S = 300.0  # a row never measured yet: about a peer's equal-token run on one idle core


def measured(runs: Iterable[dict[str, Any]]) -> dict[tuple, list[float]]:
    """{(row, layer, k, budget): [seconds of each measured job]}: training, fidelity and its share of splicing."""
    out: dict[tuple, list[float]] = {}
    for e in runs:
        if "train" not in e or "eval" not in e:
            continue
        s = e["train"]["train_s"] + e.get("fid_s", 0.0) + e.get("splice_s", 0.0) / max(1, e.get("splice_models", 1))
        out.setdefault((e["row"], e["layer"], e["k"], e["budget"]), []).append(s)
    return out


def job_cost(job: Job, seen: dict[tuple, list[float]]) -> float:
    """Seconds ``job`` is expected to take on one core: the median of its measured twins (same row, layer, k and
    budget), else of the same row and budget at any layer / k (the step cost barely depends on k at F = 4096),
    else, for an equal-time job, of its reference row at equal tokens (the time it is trained for), else
    ``UNMEASURED_S``."""
    start = PEER_START_S if ROWS[job.row].impl != "ours" else 0.0
    fallbacks = [
        [(job.row, job.layer, job.k, job.budget)],
        [key for key in seen if key[0] == job.row and key[3] == job.budget],
    ]
    if job.budget == "time":
        fallbacks.append([key for key in seen if key[0] == reference_row(job.row) and key[3] == "tokens"])
    for keys in fallbacks:
        vals = [v for key in keys for v in seen.get(key, [])]
        if vals:
            return statistics.median(vals) + start
    return UNMEASURED_S + start


def assign(chains: list[list[Job]], costs: dict[Job, float], workers: int) -> list[list[Job]]:
    """Deal the chains to ``workers`` shards, longest first to the least loaded (each chain stays whole and in
    order, so its equal-time jobs run after the equal-token jobs they are sized from)."""
    shards: list[list[Job]] = [[] for _ in range(max(1, workers))]
    load = [0.0] * len(shards)
    for chain in sorted(chains, key=lambda c: -sum(costs[j] for j in c)):
        i = load.index(min(load))
        shards[i] += chain
        load[i] += sum(costs[j] for j in chain)
    return shards


def costs(grid: Grid, runs: list[dict[str, Any]]) -> dict[Job, float]:
    """``job_cost`` of every job of ``grid`` (done or not), from the measured entries ``runs``."""
    seen = measured(runs)
    return {j: job_cost(j, seen) for j in grid.jobs()}


def estimate(grid: Grid, runs: list[dict[str, Any]], workers: int) -> tuple[float, float, list[str]]:
    """(single-core seconds, wall seconds on ``workers`` idle cores, rows never measured) of every job of
    ``grid``, done or not."""
    per_job = costs(grid, runs)
    shards = assign(grid.chains(), per_job, workers)
    wall = max(sum(per_job[j] for j in s) for s in shards)
    rows_seen = {key[0] for key in measured(runs)}
    return sum(per_job.values()), wall, sorted({j.row for j in per_job if j.row not in rows_seen})
