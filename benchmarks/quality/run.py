"""Run the quality comparison: train every row of the grid with its own code, score all with one harness.

    python -m benchmarks.quality.run                  # the full grid (make quality): 3 seeds, k 16/32/64, 2 budgets
    python -m benchmarks.quality.run --reduced        # 1 seed, k = 32, equal tokens
    python -m benchmarks.quality.run --rows ours,sparsify --seeds 0 --ks 32 --budgets tokens --name mine

Trained models stay under --out (default /work/qbench or $MX_QBENCH): <row>/<seed>/ for layer 12, k 32, equal
tokens, else L<layer>_k<k>_<budget>/<row>/<seed>/; a folder that already holds a finished training is reused
(delete it to retrain). Results: benchmarks/quality/results/<name>.json; then ``python -m benchmarks.quality.report``.
Our rows train in this process; peer rows in .venv-bench (``train_peer``; falls back to this interpreter when
.venv-bench is missing and the peer imports here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import exchange, harness
from .caches import CachePair, build_cache_pair, cache_tokens, default_cache_pair, is_complete
from .spec import ROWS, Grid, Row, reduced_grid
from .train_ours import RowUnavailable
from .train_ours import train as train_ours

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"


def bench_python() -> str:
    py = REPO / ".venv-bench" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def run_dir(out: str, row: str, seed: int, layer: int, k: int, budget: str) -> str:
    tag = "" if (layer, k, budget) == (12, 32, "tokens") else f"L{layer}_k{k}_{budget}"
    return os.path.join(out, tag, row, str(seed)) if tag else os.path.join(out, row, str(seed))


def _defaults() -> tuple[list[int], int, int]:
    """(group sizes, batch tokens, total tokens) of the package's default TrainConfig, read now."""
    from matryoshka_ext.config import TrainConfig

    c = TrainConfig()
    return list(c.transcoder.group_sizes), c.batch_tokens, c.total_tokens


def train_peer(row: Row, cache: str, path: str, seed: int, k: int, groups: list[int], batch: int,
               tokens: int, seconds: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Run ``train_peer`` for ``row`` in the bench environment; returns its JSON line."""
    cmd = [bench_python(), "-m", "benchmarks.quality.train_peer", "--impl", row.impl, "--mode", row.mode,
           "--cache", cache, "--out", path, "--name", row.name, "--seed", str(seed), "--k", str(k),
           "--groups", ",".join(map(str, groups)), "--batch", str(batch), "--tokens", str(tokens)]  # fmt: skip
    if seconds:
        cmd += ["--seconds", f"{seconds:.3f}"]
    if row.variant == "skip":
        cmd.append("--skip")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"{row.name}: train_peer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def load_model_of(row: Row, train: dict[str, Any], groups: list[int]) -> Any:
    """The trained model as a BaseTranscoder, through the loaders (ours, SAELens) or the exchange format."""
    from matryoshka_ext.loaders import load_transcoder

    if row.impl == "ours":
        return load_transcoder(train["path"])
    if train.get("format") == "saelens":
        ends = [sum(groups[: i + 1]) for i in range(len(groups))]
        return exchange.load_saelens(train["path"], ends, row.name)
    return exchange.load(train["path"])


def _train_one(row: Row, pair: CachePair, path: str, seed: int, k: int, groups: list[int], batch: int,
               tokens: int, seconds: float = 0.0) -> dict[str, Any]:  # fmt: skip
    done = os.path.join(path, "quality_train.json")
    if os.path.exists(done):
        with open(done) as fh:
            return json.load(fh)
    load0 = os.getloadavg()[0]
    if row.impl == "ours":
        info = train_ours(row.variant, row.mode, pair.train, path, seed, k, tokens)
    else:
        info = train_peer(row, pair.train, path, seed, k, groups, batch, tokens, seconds)
    info["load_before"], info["load_after"] = load0, os.getloadavg()[0]
    os.makedirs(path, exist_ok=True)
    with open(done, "w") as fh:
        json.dump(info, fh, indent=2)
    return info


def run_grid(grid: Grid, pairs: dict[int, CachePair], out: str, log=print) -> dict[str, Any]:
    """Train every (layer, k, seed, budget, row) and evaluate; returns the results document."""
    groups, batch, default_tokens = _defaults()
    tokens = grid.total_tokens or default_tokens
    rows = [ROWS[r] for r in grid.rows]
    runs: list[dict[str, Any]] = []
    for layer, pair in pairs.items():
        for k in grid.ks:
            for seed in grid.seeds:
                ours_s: dict[str, float] = {}  # our training time per mode: the equal-time budget
                eq_s: dict[str, float] = {}
                for budget in ("tokens", "time"):
                    if budget not in grid.budgets and not (budget == "tokens" and "time" in grid.budgets):
                        continue
                    for row in sorted(rows, key=lambda r: r.impl != "ours"):  # ours first: it sets the time
                        if budget == "time" and row.impl == "ours":
                            continue  # our row at equal time is our row at equal tokens
                        path = run_dir(out, row.name, seed, layer, k, budget)
                        seconds, n_tok = 0.0, tokens
                        if budget == "time":
                            base = "ours" if row.mode == "transcoder" else "ours_sae"
                            if base not in ours_s:
                                log(f"[quality] {row.name}: no {base} time to match; skipped")
                                continue
                            seconds = ours_s[base]
                            # the schedule spans the tokens the peer can see in that time (from its equal-token run)
                            rate = tokens / eq_s[row.name] if row.name in eq_s else None
                            n_tok = max(batch, int(seconds * rate) // batch * batch) if rate else 4 * tokens
                        t0 = time.perf_counter()
                        try:
                            info = _train_one(row, pair, path, seed, k, groups, batch, n_tok, seconds)
                        except RowUnavailable as e:
                            log(f"[quality] {row.name}: unavailable ({e})")
                            runs.append({"row": row.name, "layer": layer, "k": k, "seed": seed, "budget": budget,
                                         "unavailable": str(e)})  # fmt: skip
                            continue
                        log(f"[quality] L{layer} k{k} seed{seed} {budget:6s} {row.name:15s} trained "
                            f"{info['tokens']} tokens in {info['train_s']:.1f} s ({time.perf_counter() - t0:.0f} s)")
                        if budget == "tokens":
                            eq_s[row.name] = info["train_s"]
                            if row.impl == "ours" and row.variant == "matryoshka":
                                ours_s[row.name] = info["train_s"]
                        if budget in grid.budgets:
                            runs.append({"row": row.name, **row.to_dict(), "layer": layer, "k": k, "seed": seed,
                                         "budget": budget, "train": info})  # fmt: skip
                # ours at equal time = ours at equal tokens (same model, listed under both budgets)
                if "time" in grid.budgets:
                    for r in [r for r in runs if r.get("budget") == "tokens" and r.get("impl") == "ours"
                              and r["layer"] == layer and r["k"] == k and r["seed"] == seed]:  # fmt: skip
                        runs.append({**r, "budget": "time"})
        evaluate_layer(runs, layer, pair, grid, groups, log)
    return {"runs": runs}


def evaluate_layer(runs: list[dict[str, Any]], layer: int, pair: CachePair, grid: Grid, groups: list[int],
                   log=print) -> None:  # fmt: skip
    """Score every trained run of ``layer`` in place (one evaluate call per mode; models loaded once)."""
    mine = [r for r in runs if r["layer"] == layer and "train" in r]
    lm = None
    for mode in ("transcoder", "sae"):
        todo = [r for r in mine if r["mode"] == mode]
        if not todo:
            continue
        uniq: dict[str, Any] = {}
        for r in todo:
            uniq.setdefault(r["train"]["path"], r)
        tcs = []
        for path, r in uniq.items():
            tc = load_model_of(ROWS[r["row"]], r["train"], groups)
            tc.name = path
            tcs.append(tc)
        if mode == "transcoder" and grid.splice_tokens and lm is None:
            t0 = time.perf_counter()
            lm = harness.load_lm_and_contexts(layer)
            log(f"[quality] LM loaded in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        res = harness.score(tcs, pair.heldout, mode, grid.heldout_tokens, grid.splice_tokens, lm, layer)
        log(f"[quality] L{layer} {mode}: {len(tcs)} models scored in {time.perf_counter() - t0:.0f} s")
        by_path = {e["name"]: harness.summarize(e) for e in res["transcoders"]}
        for r in todo:
            r["eval"] = by_path[r["train"]["path"]]
            r["eval"]["clean"] = res["clean"]


def resolve_pairs(layers: list[int], train: str | None, heldout: str | None, build: bool, wait_s: float,
                  log=print) -> dict[int, CachePair]:  # fmt: skip
    if train or heldout:
        if not (train and heldout) or len(layers) != 1:
            raise SystemExit("--train-cache and --heldout-cache go together, with one layer")
        return {layers[0]: CachePair(layers[0], train, heldout)}
    pairs = {}
    for layer in layers:
        pair = default_cache_pair(layer)
        t0 = time.time()
        while not (is_complete(pair.train) and is_complete(pair.heldout)):
            if build:
                log(f"[quality] building the layer-{layer} caches (one LM load)")
                pair = build_cache_pair(layer)
                break
            if time.time() - t0 > wait_s:
                raise SystemExit(f"caches missing: {pair.train}, {pair.heldout} (--build-caches builds them)")
            time.sleep(30)
        pairs[layer] = pair
    return pairs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reduced", action="store_true", help="1 seed, k = 32, equal tokens")
    p.add_argument("--rows", help=f"comma-separated rows (default all: {','.join(ROWS)})")
    p.add_argument("--seeds")
    p.add_argument("--ks")
    p.add_argument("--budgets", help="tokens,time")
    p.add_argument("--layers", default="12", help="e.g. 12,15 (each layer needs its caches)")
    p.add_argument("--tokens", type=int, help="training tokens (default: the package's TrainConfig default)")
    p.add_argument("--splice-tokens", type=int)
    p.add_argument("--heldout-tokens", type=int, help="held-out tokens scored (default: all of the cache)")
    p.add_argument("--train-cache")
    p.add_argument("--heldout-cache")
    p.add_argument("--build-caches", action="store_true", help="build missing caches with the LM")
    p.add_argument("--wait-cache", type=float, default=0.0, help="seconds to wait for the caches to appear")
    p.add_argument("--out", default=os.environ.get("MX_QBENCH", "/work/qbench"))
    p.add_argument("--name", help="results file stem (default: reduced or full)")
    a = p.parse_args(argv)
    grid = reduced_grid() if a.reduced else Grid()
    if a.rows:
        grid.rows = [r for r in a.rows.split(",") if r]
        unknown = sorted(set(grid.rows) - set(ROWS))
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; known: {list(ROWS)}")
    for name, conv in (("seeds", int), ("ks", int), ("budgets", str), ("layers", int)):
        v = getattr(a, name)
        if v:
            setattr(grid, name, [conv(s) for s in v.split(",") if s])
    grid.total_tokens = a.tokens or grid.total_tokens
    grid.splice_tokens = a.splice_tokens if a.splice_tokens is not None else grid.splice_tokens
    grid.heldout_tokens = a.heldout_tokens or grid.heldout_tokens
    pairs = resolve_pairs(grid.layers, a.train_cache, a.heldout_cache, a.build_caches, a.wait_cache)
    t0 = time.perf_counter()
    doc = run_grid(grid, pairs, a.out)
    groups, batch, default_tokens = _defaults()
    doc["meta"] = {
        "name": a.name or ("reduced" if a.reduced else "full"),
        "reduced": a.reduced,
        "grid": grid.to_dict(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "caches": {str(layer): {"train": p.train, "heldout": p.heldout, "train_tokens": cache_tokens(p.train),
                                "heldout_tokens": cache_tokens(p.heldout)} for layer, p in pairs.items()},  # fmt: skip
        "defaults": {"group_sizes": groups, "batch_tokens": batch, "total_tokens": default_tokens},
        "wall_s": time.perf_counter() - t0,
        "out": a.out,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"{doc['meta']['name']}.json"
    dest.write_text(json.dumps(doc, indent=1))
    print(f"[quality] wrote {dest}")


if __name__ == "__main__":
    main()
