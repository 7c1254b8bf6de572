"""The main job's timing table (matryoshka_ext._timing): stages recorded per process into one JSON file,
the process names from $MATRYOSHKA_EXT_TIMING_PROCESS, the summary table and the command line run.sh uses."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest

from matryoshka_ext import _timing


@pytest.fixture
def timing_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "timing.json"  # the folder does not exist yet: record creates it
    monkeypatch.setenv(_timing.ENV_VAR, str(path))
    monkeypatch.delenv(_timing.PROCESS_VAR, raising=False)
    return path


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(_timing.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with _timing.stage("ignored"):
        pass
    _timing.record("ignored too", 1.0)
    assert _timing.timing_file() is None and os.listdir(tmp_path) == []


def test_stages_round_trip_through_json_with_process_names(timing_file, monkeypatch):
    _timing.record("set-up", 12.3456, process="set-up")
    monkeypatch.setenv(_timing.PROCESS_VAR, "train")
    with _timing.stage("activation caching (train, 1000 tokens)"):
        pass
    with pytest.raises(RuntimeError), _timing.stage("training"):  # a stage that raises is still recorded
        raise RuntimeError("boom")
    monkeypatch.delenv(_timing.PROCESS_VAR)
    _timing.record("loose", 0.5)
    data = json.loads(timing_file.read_text())
    assert data == _timing.load(str(timing_file))
    got = [(s["process"], s["name"]) for s in data["stages"]]
    assert got == [
        ("set-up", "set-up"),
        ("train", "activation caching (train, 1000 tokens)"),
        ("train", "training"),
        ("python", "loose"),  # no process name set
    ]
    assert data["stages"][0]["seconds"] == 12.346  # rounded to ms
    assert all(0 <= s["seconds"] < 5 for s in data["stages"][1:3])
    assert len(data["load_avg"]) == 3


def test_summary_table_walls_other_and_total(timing_file):
    for proc, name, sec in [
        ("set-up", "set-up", 100.0),
        ("train", "model load", 10.0),
        ("train", "activation caching", 300.0),
        ("eval", "eval: spliced LM loss", 40.0),
        ("train", "train", 400.0),  # the wall time run.sh measured around the train command
    ]:
        _timing.record(name, sec, process=proc, path=str(timing_file))
    lines = _timing.summary_lines(_timing.load(str(timing_file)))
    text = "\n".join(lines)

    def value(label: str) -> float:
        (line,) = [ln for ln in lines if ln.strip().startswith(label + " ")]
        return float(line.split()[-1]) if label != "total" else float(line.split()[1])

    assert lines[0].startswith("main job timing")
    assert value("set-up") == 100.0 and value("train") == 400.0
    # train: its stages, then what the stages do not cover (400 - 10 - 300)
    assert value("other (start-up, imports, writing)") == pytest.approx(90.0)
    # eval has no wall time recorded: its stages' sum stands in, and no "other" line
    assert value("eval") == 40.0 and text.count("other (") == 1
    assert value("total") == pytest.approx(540.0)
    order = [ln.split()[0] for ln in lines if ln.startswith("  ") and not ln.startswith("    ")]
    assert order[:3] == ["set-up", "train", "eval"]  # processes in first-seen order
    assert "load average at the end" in lines[-1]


def _record_many(path: str, proc: str) -> None:
    for i in range(25):
        _timing.record(f"stage {i}", 0.001, process=proc, path=path)


def test_concurrent_writers_lose_no_stage(tmp_path):
    path = str(tmp_path / "t.json")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(path, f"p{j}")) for j in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stages = _timing.load(path)["stages"]
    assert len(stages) == 75
    for j in range(3):
        assert [s["name"] for s in stages if s["process"] == f"p{j}"] == [f"stage {i}" for i in range(25)]


def test_command_line_add_and_summary(tmp_path):
    path = str(tmp_path / "t.json")
    run = [sys.executable, "-m", "matryoshka_ext._timing", path]
    subprocess.run([*run, "--add", "set-up", "61.5"], check=True)
    out = subprocess.run([*run, "--add", "samples", "3", "--summary"], check=True, capture_output=True, text=True)
    assert [s["process"] for s in _timing.load(path)["stages"]] == ["set-up", "samples"]
    assert "set-up" in out.stdout and "(1.1 min)" in out.stdout  # 64.5 s
