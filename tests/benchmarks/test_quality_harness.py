"""The quality benchmark (benchmarks/quality) end to end on a tiny synthetic cache, so that the harness cannot rot.

A reduced grid (k = 8, 8192 tokens, d = 32) runs through the real code path: our Trainer for our rows,
SAELens' own SAETrainer (installed in the project venv) for a peer row at both budgets, and, where .venv-bench
exists, dictionary_learning's and sparsify's trainers too; every model is scored by the harness, the results
document is resumable, and the report renders it. The spliced loss needs the language model and is not run here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.quality import report
from benchmarks.quality.caches import CachePair
from benchmarks.quality.run import Results, Runner, bench_python, peer_versions
from benchmarks.quality.spec import ROWS, Grid, Job, Part, full_grid, reference_row
from matryoshka_ext.training.sources import SyntheticActivations, write_activation_cache

K, TOKENS = 8, 8192
REQUIRE = os.environ.get("MX_REQUIRE_PEERS", "") not in ("", "0")


def _cache(path: Path, tokens: int, seed: int) -> str:
    src = SyntheticActivations(d_in=32, d_out=32, batch_size=1024, n_features=256, active=6, seed=seed)
    return write_activation_cache(src, tokens, str(path), dtype=torch.float32, progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One grid run (and its rerun) shared by the tests below: (runner, results, rows, out folder)."""
    tmp = tmp_path_factory.mktemp("quality")
    pair = CachePair(12, _cache(tmp / "train", TOKENS, 1), _cache(tmp / "held", 4096, 2))
    versions = peer_versions(bench_python())
    if versions["sae-lens"] is None:
        if REQUIRE:
            pytest.fail("MX_REQUIRE_PEERS is set but sae-lens is not installed")
        pytest.skip("sae-lens is not installed")
    extra = []  # the other peers live only in .venv-bench (scripts/bench_env.sh), which scripts/test.sh does not build
    if versions["dictionary-learning"]:
        extra.append("dl_sae")
    if versions["eai-sparsify"]:
        extra += ["sparsify", "sparsify_sae"]
    rows = ["ours", "ours_plain", "ours_seed", "ours_sae", "saelens_sae"] + extra
    grid = Grid([Part(rows, [0], [K], ["tokens"], splice="none"), Part(["saelens_sae"], [0], [K], ["time"])],
                total_tokens=TOKENS, splice_tokens=0)  # fmt: skip
    out = tmp / "out"
    res = Results(out / "test.json", out / "mirror" / "test.json")
    runner = Runner(grid, {12: pair}, str(out), res, threads=torch.get_num_threads(), log=lambda *_: None)
    runner.run()
    return runner, res, rows, out


def test_grid_jobs_order_prerequisites_first():
    jobs = full_grid().jobs()
    assert len(jobs) == len(set(jobs))
    pos = {j: i for i, j in enumerate(jobs)}
    timed = [j for j in jobs if j.budget == "time"]
    assert timed and all(ROWS[j.row].impl != "ours" for j in timed)
    for j in timed:  # the reference row's time and the peer's own token rate are known before it runs
        assert pos[j._replace(budget="tokens", row=reference_row(j.row))] < pos[j]
        assert pos[j._replace(budget="tokens")] < pos[j]
    g = full_grid()
    assert g.splice_of(Job(12, 32, 0, "tokens", "ours")) == "all"
    assert g.splice_of(Job(12, 32, 1, "tokens", "ours")) == "last"


def test_every_row_trained_by_its_code_and_scored(bench):
    runner, res, rows, _ = bench
    doc = json.loads(res.path.read_text())
    assert json.loads(res.mirror.read_text()) == doc
    by = {(r["row"], r["budget"]): r for r in doc["runs"]}
    for row in rows:
        e = by[(row, "tokens")]
        ev = e["eval"]
        assert ev["n_tokens"] == 4096  # every held-out row
        nested = ROWS[row].variant in ("matryoshka", "seed")
        assert [p["latents"] for p in ev["prefixes"]] == ([256, 512, 1024, 2048, 4096] if nested else [4096])
        for p in ev["prefixes"]:
            assert 0 < p["fvu"] < float("inf") and p["l0_mean"] > 0  # 4 steps: a peer may still be far off
        assert 0 <= ev["dead_fraction"] <= 1 and 0 <= ev["dense_fraction"] <= 1
        # the densest latent, counted in the same pass: > 50% dense only where the max density says so
        assert 0 < ev["max_density"] <= 1 and (ev["dense50"] > 0) == (ev["max_density"] > 0.5)
        assert ev["dense_fraction"] * 4096 >= ev["dense50"] - 1e-9
        assert e["train"]["tokens"] == TOKENS // runner.batch * runner.batch  # the package's default batch
        if ROWS[row].impl != "ours":
            # the harness reads the export exactly as the peer's own inference computes it
            assert e["train"]["export_rel_err"] < 1e-4, (row, e["train"]["export_rel_err"])
        if ROWS[row].impl == "sparsify":
            assert all(p["l0_mean"] == K for p in ev["prefixes"])  # per-row TopK at inference
    assert by[("ours_seed", "tokens")]["spec"]["config"]["transcoder"]["prefix_weights"][:-1] == [0.0] * 4


def test_equal_time_budget_is_our_training_time(bench):
    runner, res, _, _ = bench
    doc = json.loads(res.path.read_text())
    by = {(r["row"], r["budget"]): r for r in doc["runs"]}
    ours, peer, timed = by[("ours_sae", "tokens")], by[("saelens_sae", "tokens")], by[("saelens_sae", "time")]
    assert timed["spec"]["seconds"] == pytest.approx(ours["train"]["train_s"], abs=1e-3)
    step_s = peer["train"]["train_s"] / peer["train"]["steps"]
    # the clock is checked before every step: at most one step past our time (x3 slack for a loaded box)
    assert timed["train"]["train_s"] <= ours["train"]["train_s"] + 3 * step_s + 1.0
    assert 1 <= timed["train"]["steps"] <= timed["spec"]["tokens"] // runner.batch


def test_rerun_retrains_nothing_and_stale_specs_retrain(bench):
    runner, res, _, out = bench
    before = res.path.read_text()
    marks = {p: p.stat().st_mtime_ns for p in out.rglob("quality_train.json")}
    runner.run()  # everything in the document is current: nothing is trained or scored again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("quality_train.json")} == marks
    assert json.loads(res.path.read_text())["runs"] == json.loads(before)["runs"]
    # a changed training spec (here the token budget) makes our row stale: retrained into a new folder
    runner.grid = Grid([Part(["ours"], [0], [K], ["tokens"], splice="none")], total_tokens=2 * TOKENS, splice_tokens=0)
    runner.tokens = 2 * TOKENS
    runner.run()
    e = res.get(Job(12, K, 0, "tokens", "ours"))
    assert e["train"]["tokens"] == 2 * TOKENS
    assert len(list((out / "runs" / f"L12_k{K}_tokens" / "ours").iterdir())) == 2


def test_report_renders_every_row(bench, tmp_path):
    _, res, rows, _ = bench
    doc = json.loads(res.path.read_text())
    text = report.render({"test": doc}, tmp_path)
    for row in rows:
        assert f"| {row} |" in text
    assert "### Where we stand" in text and "### saelens_sae" in text
    assert "equal wall-clock" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "quality_test_L12_tokens_sae.png" in pngs and "quality_test_L12_tokens_transcoder.png" in pngs
    for png in pngs:
        assert f"]({png})" in text and (tmp_path / png).stat().st_size > 1000


def test_two_runners_share_one_document(tmp_path):
    # one runner per core on the same document: neither write drops the other's entries, and a rewrite of an
    # entry replaces it
    a, b = Results(tmp_path / "d.json", tmp_path / "m.json"), Results(tmp_path / "d.json", tmp_path / "m.json")

    def entry(row: str, seed: int, fvu: float) -> dict:
        return {"layer": 12, "k": 32, "seed": seed, "budget": "tokens", "row": row, "fvu": fvu}

    a.put(entry("ours", 0, 0.3))
    b.put(entry("sparsify", 0, 0.28))
    a.put(entry("ours", 1, 0.31))
    b.put(entry("sparsify", 0, 0.29))
    for path in (tmp_path / "d.json", tmp_path / "m.json"):
        runs = {(e["row"], e["seed"]): e["fvu"] for e in json.loads(path.read_text())["runs"]}
        assert runs == {("ours", 0): 0.3, ("ours", 1): 0.31, ("sparsify", 0): 0.29}


def test_goals_are_checked_from_the_means():
    def entry(row: str, seed: int, fvu: float, budget: str = "tokens") -> dict:
        ev = {"prefixes": [{"fvu": fvu + 0.1, "l0_mean": 20.0}, {"fvu": fvu, "l0_mean": 32.0}],
              "dead_fraction": 0.03, "max_density": 0.45, "n_tokens": 122_880, "dense_fraction": 0.01}  # fmt: skip
        return {"row": row, "seed": seed, "layer": 12, "k": 32, "budget": budget, "eval": ev}

    runs = [entry("ours", s, f) for s, f in enumerate((0.28, 0.29))]  # mean 0.285
    runs += [entry("sparsify", s, f) for s, f in enumerate((0.286, 0.288))]  # mean 0.287: ours below
    runs += [entry("ours_plain", 0, 0.27), entry("ours_skip", 0, 0.23), entry("sparsify_skip", 0, 0.22)]
    runs += [entry("sparsify", 0, 0.30, budget="time")]
    text = "\n".join(report.goals(report.group_runs({"runs": runs})))
    assert "`ours` 0.2850 [2] vs the best peer `sparsify` 0.2870 [2]: **met**" in text
    assert "`ours_skip` 0.2300 [1] vs the best peer `sparsify_skip` 0.2200 [1]: **missed**" in text
    assert "Equal wall-clock: `ours` 0.2850 [2] vs `sparsify` trained for our time 0.3000 [1]: **met**" in text
    assert "within 5% of plain BatchTopK `ours_plain` 0.2700 [1]: **missed** (+5.6%)" in text
    assert "0.2850 -> 0.2300 [1]: **met**" in text
    assert "dead at most 3.0%" in text and "(< 5%: **met**)" in text and "(<= 0.5: **met**)" in text


def test_chains_cover_the_grid_and_workers_get_balanced_shares():
    from benchmarks.quality import schedule

    grid = full_grid()
    chains = grid.chains()
    flat = [j for c in chains for j in c]
    assert sorted(flat) == sorted(grid.jobs())  # every job once
    assert {15, 12} <= set(grid.layers())  # the second layer is part of `make quality`
    for chain in chains:  # a chain holds every prerequisite of its equal-time jobs, earlier in the chain
        pos = {j: i for i, j in enumerate(chain)}
        assert len({(j.layer, j.k, j.seed, ROWS[j.row].mode) for j in chain}) == 1
        for j in (j for j in chain if j.budget == "time"):
            assert pos[j._replace(budget="tokens", row=reference_row(j.row))] < pos[j]
            assert pos[j._replace(budget="tokens")] < pos[j]
    runs = [{"row": "saelens_sae", "layer": 12, "k": 32, "budget": "tokens", "train": {"train_s": 600.0},
             "eval": {}, "fid_s": 10.0},
            {"row": "ours", "layer": 12, "k": 32, "budget": "tokens", "train": {"train_s": 80.0}, "eval": {},
             "fid_s": 10.0, "splice_s": 120.0, "splice_models": 4}]  # fmt: skip
    seen = schedule.measured(runs)
    assert schedule.job_cost(Job(12, 32, 1, "tokens", "ours"), seen) == 120.0  # 80 + 10 + 120 / 4
    assert schedule.job_cost(Job(12, 64, 0, "tokens", "saelens_sae"), seen) == 610.0 + schedule.PEER_START_S
    assert schedule.job_cost(Job(12, 32, 0, "time", "sparsify"), seen) == 120.0 + schedule.PEER_START_S  # ours' time
    unmeasured = schedule.UNMEASURED_S + schedule.PEER_START_S  # its reference row ours_sae was never measured
    assert schedule.job_cost(Job(12, 32, 0, "time", "saelens_sae"), seen) == unmeasured
    costs = {j: schedule.job_cost(j, seen) for j in grid.jobs()}
    shards = schedule.assign(chains, costs, 2)
    loads = [sum(costs[j] for j in s) for s in shards]
    assert sorted(j for s in shards for j in s) == sorted(grid.jobs())
    assert max(loads) - min(loads) <= max(sum(costs[j] for j in c) for c in chains)  # LPT's bound
    one, wall2, _ = schedule.estimate(grid, runs, 2)
    assert one == pytest.approx(sum(loads)) and wall2 == pytest.approx(max(loads)) and wall2 < one


def test_two_workers_run_the_grid_into_one_document(tmp_path):
    from benchmarks.quality import run

    pair = CachePair(12, _cache(tmp_path / "train", TOKENS, 1), _cache(tmp_path / "held", 2048, 2))
    run.main(["--rows", "ours,ours_plain", "--seeds", "0,1", "--ks", str(K), "--budgets", "tokens", "--splice",
              "none", "--splice-tokens", "0", "--tokens", str(TOKENS), "--layers", "12", "--train-cache", pair.train,
              "--heldout-cache", pair.heldout, "--out", str(tmp_path / "out"), "--name", "w", "--no-mirror",
              "--workers", "2"])  # fmt: skip
    doc = json.loads((tmp_path / "out" / "w.json").read_text())
    done = {(e["row"], e["seed"]) for e in doc["runs"] if "eval" in e}
    assert done == {("ours", 0), ("ours", 1), ("ours_plain", 0), ("ours_plain", 1)}
    assert doc["meta"]["workers"] == 2 and doc["meta"]["grid"]["parts"][0]["seeds"] == [0, 1]
    shards = json.loads((tmp_path / "out" / "w.shards.json").read_text())
    assert len(shards) == 2 and all(shards)  # one seed's chain each
    assert all(e["train"]["threads"] == 1 for e in doc["runs"])  # one thread per worker on this 2-core box


def test_a_wider_splice_answers_a_narrower_request():
    from benchmarks.quality.run import fingerprint, splice_fresh

    spec = {"heldout": "h", "splice_tokens": 4096, "prefixes": "last", "model_dtype": "bfloat16", "harness": 2}
    every = {**spec, "prefixes": "all"}
    assert splice_fresh({"splice_fp": fingerprint(every)}, spec)  # every prefix spliced: the last one too
    assert splice_fresh({"splice_fp": fingerprint(spec)}, spec)
    assert not splice_fresh({"splice_fp": fingerprint(spec)}, every)  # only the last: every prefix is still to do
    assert not splice_fresh({"splice_fp": fingerprint({**every, "splice_tokens": 8192})}, spec)
    assert not splice_fresh({}, spec)
