"""Runs a batch of op fuzz specs in this (separate) process: python child.py SPECS.json.

Prints one JSON line per event, flushed at once, so that the parent can name the case a crash happened in:
{"start": i} before case i, {"id": i, ...outcome} after it, {"done": count} at the end. A segfault or abort in
the extension kills only this process; the parent sees the signal and the last "start" without an outcome.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases  # noqa: E402  (a sibling module, imported by path so that this file runs as a plain script)


def main(path: str) -> int:
    with open(path) as fh:
        batch = json.load(fh)
    for i, item in enumerate(batch):
        print(json.dumps({"start": i}), flush=True)
        outcome = cases.run_spec(item["spec"], item["seed"])
        print(json.dumps({"id": i, **outcome}), flush=True)
    print(json.dumps({"done": len(batch)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
