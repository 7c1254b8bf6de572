"""The parent's side of benchmarks/worker.py: start a case in a fresh process, step it, read its memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .steps import Case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerError(RuntimeError):
    pass


class Worker:
    """One case in its own Python process (the same interpreter as the caller)."""

    def __init__(self, case: Case, python: str | None = None):
        self.case = case
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "benchmarks.worker", json.dumps(case.to_dict())],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.info = self._read()
        if not self.info.get("ready"):
            self.close()
            raise WorkerError(f"{case.impl}: could not build the step: {self.info.get('error')}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{self.case.impl}: worker exited with code {code} (its stderr is above)")
        return json.loads(line)

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def step(self) -> None:
        self._ask("step")

    def stats(self) -> dict:
        return self._ask("stats")

    def profile(self, steps: int = 2) -> str:
        return self._ask(f"profile {steps}")["table"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
