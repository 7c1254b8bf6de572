"""Runs one benchmark case in its own process, so that its peak memory is its own and peers never share a process.

    python -m benchmarks.worker '<Case as JSON>'

Protocol (one JSON line per reply on the original stdout; library prints go to stderr):
  after building         {"ready": true, "rss_import_mb": ..., "build_s": ...}
  stdin "step"           runs one training step (synchronised on GPU) -> {"ok": true}
  stdin "stats"          {"peak_rss_mb": ..., "rss_import_mb": ..., "cuda_peak_mb": ...}
  stdin "profile N"      N profiled steps -> {"table": "<torch.profiler top ops>"}
  stdin "quit" / EOF     exit
Only the standard library and torch are needed here (the GPU box has no psutil).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print (C level too) must not break the protocol
    sys.stdout = sys.stderr

    import torch

    from .steps import Case, build, preload

    case = Case(**json.loads(sys.argv[1]))
    if case.device == "cpu" and os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    cuda = case.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # Import the case's libraries before reading the baseline, so that "step memory" excludes import costs.
    t0 = time.perf_counter()
    try:
        preload(case)
        base_rss = rss_mb()
        step = build(case)
    except Exception as exc:  # reported to the parent, which fails the case
        import traceback

        traceback.print_exc()
        reply.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    sync()
    base = {"rss_import_mb": round(base_rss, 1), "build_s": round(time.perf_counter() - t0, 2)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reply.write(json.dumps({"ready": True, **base}) + "\n")

    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "step":
            step()
            sync()
            reply.write('{"ok": true}\n')
        elif cmd[0] == "stats":
            stats = {"peak_rss_mb": round(peak_rss_mb(), 1), **base}
            stats["version"] = _version(case.impl)
            if cuda:
                stats["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                stats["device_name"] = torch.cuda.get_device_name()
            reply.write(json.dumps(stats) + "\n")
        elif cmd[0] == "profile":
            reply.write(json.dumps({"table": _profile(step, int(cmd[1]), sync, cuda)}) + "\n")


def _version(impl: str) -> str:
    import importlib.metadata as md

    dist = {
        "sae_lens": "sae-lens",
        "dictionary_learning": "dictionary-learning",
        "sparsify": "eai-sparsify",
        "dense": "torch",
        "floor": "torch",
    }
    try:
        return md.version(dist.get(impl, "matryoshka-ext"))
    except md.PackageNotFoundError:
        return "source tree"


def _profile(step, n: int, sync, cuda: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=48)


if __name__ == "__main__":
    main()
