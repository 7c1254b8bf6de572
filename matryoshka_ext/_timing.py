"""Stage timings of the main job: where a run's wall-clock time went, across its processes.

Every process of the main job (set-up in bash, then ``train``, ``eval`` and ``samples``) appends the stages it
ran to one JSON file named by ``$MATRYOSHKA_EXT_TIMING`` (nothing is written when it is unset), and
``python -m matryoshka_ext._timing FILE --summary`` prints the table at the end:

    with stage("activation caching (train)"):
        ...

File layout: ``{"stages": [{"process", "name", "seconds"}...], "load_avg": [1, 5, 15 min]}``; a stage whose
name is the process's own (``process == name``) is that process's wall time, measured by the caller (run.sh),
and the rest of the process time is shown as "other (start-up, imports, writing)".
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

ENV_VAR = "MATRYOSHKA_EXT_TIMING"
#: the process name stages are recorded under (run.sh sets it per command: train, eval, samples)
PROCESS_VAR = "MATRYOSHKA_EXT_TIMING_PROCESS"


def timing_file() -> str | None:
    """The JSON file stages go to, or None when timing is off."""
    return os.environ.get(ENV_VAR) or None


def record(name: str, seconds: float, process: str | None = None, path: str | None = None) -> None:
    """Append one stage to the timing file (no-op without one). Locked, so concurrent writers cannot lose one."""
    path = path or timing_file()
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read()
        data = json.loads(text) if text.strip() else {"stages": []}
        proc = process or os.environ.get(PROCESS_VAR, "python")
        data["stages"].append({"process": proc, "name": name, "seconds": round(seconds, 3)})
        data["load_avg"] = list(os.getloadavg())
        fh.seek(0)
        fh.truncate()
        json.dump(data, fh, indent=1)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block and `record` it as stage `name` of this process (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(name, time.perf_counter() - t0)


def load(path: str) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The table: each process's wall time (when recorded), its stages indented, then the total."""
    stages = data.get("stages", [])
    order: list[str] = []
    for s in stages:
        if s["process"] not in order:
            order.append(s["process"])
    lines = ["main job timing (seconds):"]
    total = 0.0
    for proc in order:
        own = [s for s in stages if s["process"] == proc and s["name"] == proc]
        parts = [s for s in stages if s["process"] == proc and s["name"] != proc]
        wall = sum(s["seconds"] for s in own) if own else sum(s["seconds"] for s in parts)
        total += wall
        lines.append(f"  {proc:<40} {wall:8.1f}")
        for s in parts:
            lines.append(f"    {s['name']:<38} {s['seconds']:8.1f}")
        if own and parts:
            other = wall - sum(s["seconds"] for s in parts)
            lines.append(f"    {'other (start-up, imports, writing)':<38} {other:8.1f}")
    lines.append(f"  {'total':<40} {total:8.1f}  ({total / 60:.1f} min)")
    la = data.get("load_avg")
    if la:
        lines.append(f"  load average at the end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} on {os.cpu_count()} CPUs")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matryoshka_ext._timing", description=__doc__.split("\n")[0])
    p.add_argument("file")
    p.add_argument("--add", nargs=2, metavar=("NAME", "SECONDS"), help="record a process's wall time")
    p.add_argument("--summary", action="store_true", help="print the table")
    args = p.parse_args(argv)
    if args.add:
        record(args.add[0], float(args.add[1]), process=args.add[0], path=args.file)
    if args.summary:
        print("\n".join(summary_lines(load(args.file))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
