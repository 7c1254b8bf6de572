"""Run the quality comparison: train every job of the grid with its own code, score each with one harness.

    python -m benchmarks.quality.run                  # the full grid (make quality); see spec.full_grid
    python -m benchmarks.quality.run --reduced        # every row once: seed 0, k = 32, equal tokens
    python -m benchmarks.quality.run --rows ours,sparsify --seeds 0 --ks 32 --budgets tokens --name mine

Everything lives under --out (default $MX_QBENCH or /work/qbench): trained models in
runs/L<layer>_k<k>_<budget>/<row>/s<seed>-<spec hash>/, and the results document <name>.json, rewritten after
every job so that it can be read while the grid runs; it is mirrored to benchmarks/quality/results/<name>.json
(what ``benchmarks.quality.report`` renders). Resumable: a job whose entry in the document was trained with
today's spec (the TrainConfig defaults for our rows, the peer's arguments for theirs) and scored with today's
evaluation settings is not rerun; a trained folder whose scoring is missing or stale is only re-scored.
Our rows train in this process; peer rows in .venv-bench (``train_peer``; this interpreter when .venv-bench is
missing), one at a time, with ``--threads`` threads (default $OMP_NUM_THREADS, else torch's default).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import exchange, harness, schedule
from .caches import CachePair, build_cache_pair, cache_tokens, default_cache_pair, is_complete
from .spec import ROWS, Grid, Job, Part, Row, full_grid, reduced_grid, reference_row
from .train_ours import RowUnavailable, training_spec
from .train_ours import train as train_ours

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
PEER_DISTS = ("sae-lens", "dictionary-learning", "eai-sparsify")


def bench_python() -> str:
    py = REPO / ".venv-bench" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _defaults() -> tuple[list[int], int, int]:
    """(group sizes, batch tokens, total tokens) of the package's default TrainConfig, read now."""
    from matryoshka_ext.config import TrainConfig

    c = TrainConfig()
    return list(c.transcoder.group_sizes), c.batch_tokens, c.total_tokens


def peer_versions(py: str) -> dict[str, str | None]:
    """The peer distributions' versions in the interpreter that trains them (part of every peer row's spec)."""
    code = (f"import importlib.metadata as m, json\nv = {{}}\nfor d in {PEER_DISTS!r}:\n"
            "    try: v[d] = m.version(d)\n    except m.PackageNotFoundError: v[d] = None\nprint(json.dumps(v))")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_peer(row: Row, cache: str, path: str, seed: int, k: int, groups: list[int], batch: int,
               tokens: int, seconds: float, threads: int) -> dict[str, Any]:  # fmt: skip
    """Run ``train_peer`` for ``row`` in the bench environment; returns its JSON line."""
    cmd = [bench_python(), "-m", "benchmarks.quality.train_peer", "--impl", row.impl, "--mode", row.mode,
           "--cache", cache, "--out", path, "--name", row.name, "--seed", str(seed), "--k", str(k),
           "--groups", ",".join(map(str, groups)), "--batch", str(batch), "--tokens", str(tokens),
           "--threads", str(threads)]  # fmt: skip
    if seconds:
        cmd += ["--seconds", f"{seconds:.3f}"]
    if row.variant == "skip":
        cmd.append("--skip")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}  # fmt: skip
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


class Results:
    """The results document: {"meta": {...}, "runs": [entry, ...]}, one entry per job, written atomically after
    every change to ``path`` and mirrored to ``mirror``. Several runners may share one document (e.g. one per
    core): every write re-reads it under a lock and replaces only the entries this runner wrote."""

    def __init__(self, path: Path, mirror: Path | None) -> None:
        self.path, self.mirror = path, mirror
        self.doc: dict[str, Any] = self._read()
        self._mine: set[tuple] = set()

    def _read(self) -> dict[str, Any]:
        src = next((p for p in (self.path, self.mirror) if p is not None and p.exists()), None)
        return json.loads(src.read_text()) if src is not None else {"meta": {}, "runs": []}

    @staticmethod
    def key(e: dict[str, Any] | Job) -> tuple:
        if isinstance(e, Job):
            return (e.layer, e.k, e.seed, e.budget, e.row)
        return (e["layer"], e["k"], e["seed"], e["budget"], e["row"])

    def get(self, job: Job) -> dict[str, Any] | None:
        return next((e for e in self.doc["runs"] if self.key(e) == self.key(job)), None)

    def put(self, entry: dict[str, Any]) -> None:
        runs = [e for e in self.doc["runs"] if self.key(e) != self.key(entry)]
        self.doc["runs"] = runs + [entry]
        self._mine.add(self.key(entry))
        self.write()

    def write(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ours = {self.key(e): e for e in self.doc["runs"] if self.key(e) in self._mine}
            disk = self._read()
            disk["runs"] = [e for e in disk["runs"] if self.key(e) not in ours] + list(ours.values())
            disk["meta"] = {**disk.get("meta", {}), **self.doc.get("meta", {})}
            self.doc = disk
            self._write(json.dumps(self.doc, indent=1))

    def _write(self, text: str) -> None:
        for dest in (self.path, self.mirror):
            if dest is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, dest)


def splice_fresh(entry: dict[str, Any], sspec: dict[str, Any]) -> bool:
    """Whether ``entry``'s spliced scores answer ``sspec``: the same settings, or the same but every prefix spliced
    where only the last is asked for (a smaller grid run on the full grid's document keeps its wider scores)."""
    fp = entry.get("splice_fp")
    return fp == fingerprint(sspec) or (sspec["prefixes"] == "last" and fp == fingerprint({**sspec, "prefixes": "all"}))


class Runner:
    """Trains and scores the grid's jobs one at a time, recording each in ``results`` as it finishes."""

    def __init__(self, grid: Grid, pairs: dict[int, CachePair], out: str, results: Results, threads: int,
                 log=print) -> None:  # fmt: skip
        self.grid, self.pairs, self.out, self.res, self.threads, self.log = grid, pairs, out, results, threads, log
        self.groups, self.batch, default_tokens = _defaults()
        self.tokens = grid.total_tokens or default_tokens
        self.versions = peer_versions(bench_python())
        from matryoshka_ext.config import TrainConfig

        self.model_dtype = TrainConfig().model_dtype
        self._lm: dict[int, Any] = {}

    # -- what a job is
    def spec(self, job: Job) -> dict[str, Any]:
        """What determines the job's trained model; raises RowUnavailable. Equal-time jobs need the reference
        row's and their own equal-token entries (``Grid.jobs`` orders them first)."""
        row = ROWS[job.row]
        if row.impl == "ours":
            cfg = training_spec(row.variant, job.seed, job.k, self.tokens)
            return {"impl": "ours", "mode": row.mode, "config": cfg}
        spec: dict[str, Any] = {"impl": row.impl, "mode": row.mode, "variant": row.variant, "seed": job.seed,
                                "k": job.k, "groups": self.groups, "batch": self.batch, "tokens": self.tokens,
                                "versions": {d: self.versions.get(d) for d in PEER_DISTS}}  # fmt: skip
        if job.budget == "time":
            ref = self.res.get(job._replace(budget="tokens", row=reference_row(job.row)))
            own = self.res.get(job._replace(budget="tokens"))
            if ref is None or "train" not in ref or own is None or "train" not in own:
                raise RowUnavailable(f"equal-time {job.row} needs the equal-token {reference_row(job.row)} and "
                                     f"{job.row} runs of the same layer, k and seed")  # fmt: skip
            seconds = ref["train"]["train_s"]
            # its fastest equal-token run at this layer and k (the least loaded one) sizes the schedule: a run slowed
            # by a shared box would size it too short and stop the peer long before our time is up
            rates = [e["train"]["tokens"] / e["train"]["train_s"] for e in self.res.doc["runs"]
                     if "train" in e and (e["layer"], e["k"], e["budget"], e["row"]) == (job.layer, job.k, "tokens",
                                                                                         job.row)]  # fmt: skip
            rate = max(rates)
            # schedules sized to the tokens it can see in that time; the clock stops it either way
            spec.update(seconds=round(seconds, 3), ref_spec=ref["train_fp"],
                        tokens=max(self.batch, -(-int(seconds * rate) // self.batch) * self.batch))  # fmt: skip
        return spec

    def fid_spec(self, job: Job) -> dict[str, Any]:
        """What determines a job's fidelity scores (besides its model)."""
        return {"heldout": self.pairs[job.layer].heldout, "heldout_tokens": self.grid.heldout_tokens, "harness": 2}

    def splice_spec(self, job: Job) -> dict[str, Any] | None:
        """What determines a job's spliced-loss scores; None when it is not spliced (SAE rows, "none")."""
        which = self.grid.splice_of(job)
        if ROWS[job.row].mode != "transcoder" or which == "none":
            return None
        return {"heldout": self.pairs[job.layer].heldout, "splice_tokens": self.grid.splice_tokens,
                "prefixes": which, "model_dtype": self.model_dtype, "harness": 2}  # fmt: skip

    def scored(self, job: Job, spec: dict[str, Any]) -> bool:
        """Whether ``job``'s entry holds the training of ``spec`` and today's fidelity scores."""
        e = self.res.get(job)
        return bool(e) and e.get("train_fp") == fingerprint(spec) and "eval" in e and \
            e.get("fid_fp") == fingerprint(self.fid_spec(job))  # fmt: skip

    def pending(self, job: Job) -> bool:
        """Whether ``job`` still has training, scoring or splicing to do (an equal-time job whose prerequisites
        are not done yet counts as pending)."""
        try:
            spec = self.spec(job)
        except RowUnavailable:
            return True
        if not self.scored(job, spec):
            return True
        sspec = self.splice_spec(job)
        return sspec is not None and not splice_fresh(self.res.get(job), sspec)

    def run_dir(self, job: Job, fp: str) -> str:
        return os.path.join(self.out, "runs", f"L{job.layer}_k{job.k}_{job.budget}", job.row, f"s{job.seed}-{fp}")

    # -- doing it
    def train(self, job: Job, spec: dict[str, Any], path: str) -> dict[str, Any]:
        """Train (or reuse the folder's finished training) and return its info."""
        done = os.path.join(path, "quality_train.json")
        if os.path.exists(done):
            with open(done) as fh:
                return json.load(fh)
        row, pair = ROWS[job.row], self.pairs[job.layer]
        load0 = os.getloadavg()[0]
        if row.impl == "ours":
            info = train_ours(row.variant, row.mode, pair.train, path, job.seed, job.k, self.tokens)
        else:
            info = train_peer(row, pair.train, path, job.seed, job.k, self.groups, self.batch, spec["tokens"],
                              spec.get("seconds", 0.0), self.threads)  # fmt: skip
        info["load_before"], info["load_after"] = load0, os.getloadavg()[0]
        os.makedirs(path, exist_ok=True)
        with open(done, "w") as fh:
            json.dump(info, fh, indent=2)
        return info

    def lm(self, layer: int) -> Any:
        if layer not in self._lm:
            t0 = time.perf_counter()
            self._lm[layer] = harness.load_lm_and_contexts(layer)
            self.log(f"[quality] LM loaded in {time.perf_counter() - t0:.0f} s")
        return self._lm[layer]

    def do(self, job: Job) -> None:
        """Train (unless its entry or folder holds today's training) and score the fidelity of one job."""
        row = ROWS[job.row]
        base = {"row": job.row, **row.to_dict(), "layer": job.layer, "k": job.k, "seed": job.seed,
                "budget": job.budget}  # fmt: skip
        try:
            spec = self.spec(job)
        except RowUnavailable as e:
            self.log(f"[quality] {tuple(job)}: unavailable ({e})")
            if (self.res.get(job) or {}).get("unavailable") != str(e):
                self.res.put({**base, "unavailable": str(e)})
            return
        if self.scored(job, spec):
            return
        fp, ffp = fingerprint(spec), fingerprint(self.fid_spec(job))
        old = self.res.get(job)
        t0 = time.perf_counter()
        if old and old.get("train_fp") == fp and "train" in old:
            info = old["train"]
        else:
            info = self.train(job, spec, self.run_dir(job, fp))
        t1 = time.perf_counter()
        tc = load_model_of(row, info, self.groups)
        tc.name = job.row
        ev = harness.fidelity(tc, self.pairs[job.layer].heldout, row.mode, self.grid.heldout_tokens, job.layer)
        t2 = time.perf_counter()
        self.res.put({**base, "train": info, "train_fp": fp, "spec": spec, "eval": ev, "fid_fp": ffp,
                      "fid_s": t2 - t1, "done_utc": _now()})  # fmt: skip
        last = ev["prefixes"][-1]
        self.log(f"[quality] L{job.layer} k{job.k} s{job.seed} {job.budget:6s} {job.row:15s} {info['tokens']} tok in "
                 f"{info['train_s']:.0f} s (job {t1 - t0:.0f} s, fidelity {t2 - t1:.0f} s): final FVU "
                 f"{last['fvu']:.4f}, L0 {last['l0_mean']:.1f}, dead {ev['dead_fraction']:.1%}, "
                 f"dense {ev['dense_fraction']:.1%}")  # fmt: skip

    def splice_group(self, jobs: list[Job]) -> None:
        """Spliced loss of every scored job in ``jobs`` whose splice scores are missing or stale: one harness call
        per prefix setting (the clean and ablation forwards shared by all models of the call)."""
        todo: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for job in jobs:
            sspec, e = self.splice_spec(job), self.res.get(job)
            if sspec is None or e is None or "eval" not in e or splice_fresh(e, sspec):
                continue
            todo.setdefault(sspec["prefixes"], []).append((e, sspec))
        for which, items in todo.items():
            layer = items[0][0]["layer"]
            tcs = []
            for e, _ in items:
                tc = load_model_of(ROWS[e["row"]], e["train"], self.groups)
                tc.name = e["row"]
                tcs.append(tc)
            t0 = time.perf_counter()
            scores, clean = harness.splice(tcs, self.pairs[layer].heldout, self.lm(layer), self.grid.splice_tokens,
                                           which)  # fmt: skip
            dt = time.perf_counter() - t0
            for e, sspec in items:
                for p, sp in zip(e["eval"]["prefixes"], scores[e["row"]]):
                    p.update({k: sp[k] for k in harness.SPLICE_KEYS})
                e["eval"]["clean"] = clean
                e.update(splice_fp=fingerprint(sspec), splice_s=dt, splice_models=len(items))
                self.res.put(e)
            dce = ", ".join(f"{e['row']} {scores[e['row']][-1]['delta_ce']:.3f}" for e, _ in items)
            self.log(f"[quality] spliced ({which} prefixes, {self.grid.splice_tokens} tokens) {len(items)} models in "
                     f"{dt:.0f} s: final dCE {dce}")  # fmt: skip

    def run(self, jobs: list[Job] | None = None) -> None:
        """Do ``jobs`` (default: the whole grid) in order, splicing each (layer, k, seed, budget) group's
        transcoders once its jobs are scored."""
        t0 = time.perf_counter()
        jobs = self.grid.jobs() if jobs is None else jobs
        self.log(f"[quality] {len(jobs)} jobs; results -> {self.res.path}")
        group: list[Job] = []
        for i, job in enumerate(jobs):
            self.log(f"[quality] job {i + 1}/{len(jobs)}: {tuple(job)}")
            self.do(job)
            group.append(job)
            nxt = jobs[i + 1] if i + 1 < len(jobs) else None
            if nxt is None or (nxt.layer, nxt.k, nxt.seed, nxt.budget) != (job.layer, job.k, job.seed, job.budget):
                self.splice_group(group)
                group = []
        meta = self.res.doc.setdefault("meta", {})
        meta["wall_s_last_session"] = time.perf_counter() - t0
        meta["loadavg_end"] = os.getloadavg()
        self.res.write()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def grid_from_args(a: argparse.Namespace) -> Grid:
    """The full or reduced grid, or one Part from --rows/--seeds/--ks/--budgets (each defaulting to reduced's)."""
    custom = any(getattr(a, n) for n in ("rows", "seeds", "ks", "budgets"))
    if custom:
        base = reduced_grid().parts[0]
        conv = {"rows": str, "seeds": int, "ks": int, "budgets": str}
        kw = {n: [c(s) for s in getattr(a, n).split(",") if s] if getattr(a, n) else getattr(base, n)
              for n, c in conv.items()}  # fmt: skip
        grid = Grid([Part(**kw, splice=a.splice or base.splice)], splice_tokens=reduced_grid().splice_tokens)
    else:
        grid = reduced_grid() if a.reduced else full_grid()
    layers = [int(s) for s in a.layers.split(",") if s] if a.layers else None
    for part in grid.parts:
        part.layers = layers or part.layers
        try:
            part.validate()
        except ValueError as e:
            raise SystemExit(str(e)) from None
    grid.total_tokens = a.tokens or grid.total_tokens
    grid.splice_tokens = a.splice_tokens if a.splice_tokens is not None else grid.splice_tokens
    grid.heldout_tokens = a.heldout_tokens or grid.heldout_tokens
    return grid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reduced", action="store_true", help="every row once: seed 0, k = 32, equal tokens")
    p.add_argument("--rows", help=f"comma-separated rows (default all: {','.join(ROWS)})")
    p.add_argument("--seeds")
    p.add_argument("--ks")
    p.add_argument("--budgets", help="tokens,time")
    p.add_argument("--layers", help="e.g. 12,15: every part at these layers (default: the grid's own; each "
                   "layer needs its caches)")  # fmt: skip
    p.add_argument("--tokens", type=int, help="training tokens (default: the package's TrainConfig default)")
    p.add_argument("--splice", choices=("all", "last", "none"),
                   help="with --rows/--seeds/--ks/--budgets: which prefixes are spliced (default last)")  # fmt: skip
    p.add_argument("--splice-tokens", type=int)
    p.add_argument("--heldout-tokens", type=int, help="held-out tokens scored (default: all of the cache)")
    p.add_argument("--train-cache")
    p.add_argument("--heldout-cache")
    p.add_argument("--build-caches", action="store_true", help="build missing caches with the LM")
    p.add_argument("--wait-cache", type=float, default=0.0, help="seconds to wait for the caches to appear")
    p.add_argument("--out", default=os.environ.get("MX_QBENCH", "/work/qbench"))
    p.add_argument("--name", help="results document stem (default: reduced or full)")
    p.add_argument("--no-mirror", action="store_true", help="do not mirror the document to benchmarks/quality/results")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 0) or None)
    p.add_argument("--list", action="store_true", help="print the grid's jobs and exit")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel runners sharing the document (one per core; each gets --threads, default "
                   "cores / workers); the grid's independent chains are dealt out by their measured cost")  # fmt: skip
    p.add_argument("--estimate", action="store_true",
                   help="print the grid's cost from the document's measured jobs (and --workers) and exit")  # fmt: skip
    p.add_argument("--shard-file", help=argparse.SUPPRESS)  # set by --workers for its children
    p.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    grid = grid_from_args(a)
    if a.list:
        for j in grid.jobs():
            print(tuple(j))
        return
    name = a.name or ("reduced" if a.reduced else "full")
    res = Results(Path(a.out) / f"{name}.json", None if a.no_mirror else RESULTS / f"{name}.json")
    if a.estimate:
        cpu, wall, unmeasured = schedule.estimate(grid, res.doc["runs"], a.workers)
        print(f"[quality] {len(grid.jobs())} jobs: {cpu / 3600:.2f} h on one core, {wall / 3600:.2f} h on "
              f"{a.workers} worker(s)" + (f"; never measured: {', '.join(unmeasured)}" if unmeasured else ""))
        return
    import torch

    if a.shard_file is not None:
        return run_shard(a, grid, res)
    threads = a.threads or (max(1, (os.cpu_count() or 1) // a.workers) if a.workers > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    pairs = resolve_pairs(layers=grid.layers(), train=a.train_cache, heldout=a.heldout_cache,
                          build=a.build_caches, wait_s=a.wait_cache)  # fmt: skip
    groups, batch, default_tokens = _defaults()
    runner = Runner(grid, pairs, a.out, res, threads)
    res.doc["meta"] = {
        **res.doc.get("meta", {}),
        "name": name,
        "reduced": a.reduced or name == "reduced",
        "grid": grid.to_dict(),
        "date_utc": _now(),
        "machine": {"cpus": os.cpu_count(), "threads": threads, "loadavg_start": os.getloadavg()},
        "caches": {str(layer): {"train": p.train, "heldout": p.heldout, "train_tokens": cache_tokens(p.train),
                                "heldout_tokens": cache_tokens(p.heldout)} for layer, p in pairs.items()},  # fmt: skip
        "defaults": {"group_sizes": groups, "batch_tokens": batch, "total_tokens": default_tokens},
        "peer_versions": runner.versions,
        "out": a.out,
    }
    res.write()
    if a.workers > 1:
        run_workers(a, argv if argv is not None else sys.argv[1:], grid, runner, threads)
    else:
        runner.run()
    print(f"[quality] wrote {res.path}" + (f" and {res.mirror}" if res.mirror else ""))


def run_workers(a: argparse.Namespace, argv: list[str], grid: Grid, runner: Runner, threads: int) -> None:
    """Deal the grid's pending chains to ``a.workers`` child runners (this module with --shard-file/--shard),
    each writing its jobs into the shared document; waits for all and fails if one failed."""
    t0 = time.perf_counter()
    costs = {j: (c if runner.pending(j) else 0.0) for j, c in schedule.costs(grid, runner.res.doc["runs"]).items()}
    shards = schedule.assign(grid.chains(), costs, a.workers)
    shard_file = Path(a.out) / f"{runner.res.path.stem}.shards.json"
    shard_file.write_text(json.dumps([[list(j) for j in s] for s in shards]))
    for i, s in enumerate(shards):
        runner.log(f"[quality] worker {i}: {len(s)} jobs, about {sum(costs[j] for j in s) / 60:.0f} min of work")
    # children take the parent's arguments as they are: with --shard-file they only run their shard (caches are
    # built by now, and --workers / --build-caches are not read on that path)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.quality.run", *argv, "--shard-file", str(shard_file),
                               "--shard", str(i), "--threads", str(threads)], cwd=str(REPO))  # fmt: skip
             for i in range(len(shards))]
    codes = [p.wait() for p in procs]
    runner.res.doc = runner.res._read()
    meta = runner.res.doc.setdefault("meta", {})
    meta.update(wall_s_last_session=time.perf_counter() - t0, workers=len(shards), loadavg_end=os.getloadavg())
    runner.res.write()
    if any(codes):
        raise SystemExit(f"[quality] worker exit codes {codes}")


def run_shard(a: argparse.Namespace, grid: Grid, res: Results) -> None:
    """One worker of ``--workers``: its jobs from the shard file, with --threads threads, caches already built."""
    import torch

    jobs = [Job(*j) for j in json.loads(Path(a.shard_file).read_text())[a.shard]]
    torch.set_num_threads(a.threads or 1)
    pairs = resolve_pairs(layers=grid.layers(), train=a.train_cache, heldout=a.heldout_cache, build=False,
                          wait_s=a.wait_cache)  # fmt: skip

    def log(msg: str) -> None:
        print(f"[w{a.shard}] {msg}", flush=True)

    Runner(grid, pairs, a.out, res, torch.get_num_threads(), log=log).run(jobs)


if __name__ == "__main__":
    main()
