"""Data-parallel training on gloo with 2 CPU processes.

- one DDP step on 2 ranks, each with half of the global batch, equals one process on the whole batch
  (row TopK, float64 parameters: parameters, Adam moments, dead counters and threshold);
- the torchrun'd CLI: a 2-rank run checkpoints, a 1-rank run resumes from it and ends where a 1-rank run
  straight through ends; the checkpoints are written by rank 0 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from matryoshka_ext import cli
from matryoshka_ext.config import TrainConfig, TranscoderConfig
from matryoshka_ext.training.checkpoint import checkpoint_dirs, load_checkpoint
from matryoshka_ext.training.distributed import DistContext, exit_rank, split_layers
from matryoshka_ext.training.pipeline import regrid_buffer_state
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from .test_cli import ROOT
from .test_cli import SMALL as CLI_SMALL

B = 64  # global batch
STEPS = 3


def _cfg(selection: str = "row") -> TrainConfig:
    # 128 latents, 4 per token, dead after one global batch: AuxK runs from step 2 on, so the synchronized
    # dead counters matter for the gradients too
    tc = TranscoderConfig(
        dict_size=128,
        group_sizes=[16, 16, 32, 64],
        k=4,
        aux_k=8,
        dead_tokens=B,
        selection=selection,
        dtype="float64",
    )
    return TrainConfig(
        model_name="synthetic",
        batch_tokens=B,
        total_tokens=B * 10,
        lr=3e-3,
        warmup_steps=0,
        wandb_mode="disabled",
        progress=False,
        device="cpu",
        transcoder=tc,
    )


def _run_steps(ctx: DistContext, selection: str, run_dir: str) -> dict[str, torch.Tensor]:
    """STEPS train_steps on this rank's shard; the state after step 1 and after the last step."""
    data = SyntheticActivations(d_in=16, d_out=12, batch_size=B, shard=(ctx.rank, ctx.world_size))
    tr = Trainer(_cfg(selection), data, run_dir, "cpu", dist=ctx)
    tr.setup()
    out: dict[str, torch.Tensor] = {}
    for i in range(STEPS):
        x, y = tr._next_batch()
        out[f"x{i}"] = x.clone()
        assert tr.train_step(x, y) is not None
        sd = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        for j, p in enumerate(tr.model.parameters()):
            sd[f"exp_avg.{j}"] = tr.optimizer.state[p]["exp_avg"].clone()
        out.update({f"s{i}.{k}": v for k, v in sd.items()})
    assert tr.tokens_seen == STEPS * B
    return out


def _worker(rank: int, world: int, init_file: str, tmp: str, selection: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = _run_steps(DistContext.current(), selection, os.path.join(tmp, "run"))
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    exit_rank()  # success: leave before finalization can race gloo's last work object (see end_launched_rank)


def _spawn(tmp_path, selection: str) -> list[dict[str, torch.Tensor]]:
    init_file = str(tmp_path / "init")
    mp.spawn(_worker, args=(2, init_file, str(tmp_path), selection), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_ddp_step_equals_single_process_on_concatenated_batch(tmp_path):
    ranks = _spawn(tmp_path, "row")
    single = _run_steps(DistContext.single(), "row", str(tmp_path / "single"))
    for i in range(STEPS):  # the two halves are the single process's batch, in rank order
        assert torch.equal(torch.cat([ranks[0][f"x{i}"], ranks[1][f"x{i}"]]), single[f"x{i}"])
    state_keys = [k for k in single if k.startswith("s")]
    for r in ranks:
        for k in state_keys:
            a, b = r[k], single[k]
            if k.split(".")[-1] in ("tokens_since_fired", "threshold_updates", "threshold"):
                assert torch.equal(a, b), k  # integer counters, and a min over ranks: exact
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)
    # both ranks hold bit-identical models (DDP averaged the same gradients)
    for k in state_keys:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    # dead latents existed, so the AuxK path ran with synchronized counters
    assert int((single[f"s{STEPS - 1}.tokens_since_fired"] >= B).sum()) > 0


def test_ddp_batch_topk_ranks_stay_identical(tmp_path):
    # BatchTopK selects per rank (k * local rows; see docs/DISTRIBUTED.md): not the single process's
    # selection, but every rank must still hold the same weights and buffers after each step
    ranks = _spawn(tmp_path, "batch")
    for k in ranks[0]:
        if k.startswith("s"):
            assert torch.equal(ranks[0][k], ranks[1][k]), k


# test_cli's small synthetic run, made exact (row TopK, float64) and checkpointing (later flags win)
SMALL = [
    *CLI_SMALL,
    "--dead-tokens", "128",
    "--selection", "row",
    "--transcoder.dtype", "float64",
    "--warmup-steps", "3",
    "--total-tokens", "1280",
    "--ckpt-every", "10",
    "--keep-last", "3",
    "--eval-tokens", "128",
]  # fmt: skip


def _torchrun_env() -> dict[str, str]:
    path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _close_checkpoints(a: str, b: str) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.state["step"] == cb.state["step"] and ca.state["tokens_seen"] == cb.state["tokens_seen"]
    assert ca.state["data"]["batches"] == cb.state["data"]["batches"]
    for k in ca.model:
        if ca.model[k].is_floating_point():
            torch.testing.assert_close(ca.model[k], cb.model[k], rtol=1e-9, atol=1e-11, msg=k)
        else:
            assert torch.equal(ca.model[k], cb.model[k]), k


def test_torchrun_two_ranks_checkpoint_then_one_rank_resume(tmp_path, capsys):
    out = str(tmp_path / "runs")
    env = _torchrun_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "matryoshka_ext.cli", "train", *SMALL, "--out-dir", out, "--run-name", "ddp"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("per-prefix FVU") == 1  # rank 0 alone reports
    run = os.path.join(out, "ddp")
    assert [s for s, _ in checkpoint_dirs(run)] == [10, 20]
    assert not os.path.exists(os.path.join(out, "ddp-2"))  # one run folder, chosen by rank 0
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        assert len(fh.readlines()) == 2  # log_every 10: rank 0's two lines, no duplicates
    ck = load_checkpoint(run)
    assert ck.state["tokens_seen"] == 1280 and ck.state["data"]["batches"] == 20

    # resume the 2-rank run's step-10 checkpoint in one process (a copy, so step 20 of the 2-rank run stays)
    shutil.copytree(run, os.path.join(out, "one"))
    step10 = os.path.join(out, "one", "checkpoints", "step_000000010")
    assert cli.main(["train", "--resume", step10, "--progress", "false"]) == 0
    # ... and a 1-rank run straight through: all three agree at step 20 (row TopK, float64)
    assert cli.main(["train", *SMALL, "--out-dir", out, "--run-name", "single"]) == 0
    capsys.readouterr()
    one, single = load_checkpoint(os.path.join(out, "one")), os.path.join(out, "single")
    assert one.state["step"] == 20
    _close_checkpoints(one.path, load_checkpoint(single).path)
    _close_checkpoints(ck.path, load_checkpoint(single).path)

    # the other way round: the 1-rank run's step-10 checkpoint resumed by 2 ranks
    shutil.copytree(single, os.path.join(out, "two"))
    step10 = os.path.join(out, "two", "checkpoints", "step_000000010")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "matryoshka_ext.cli", "train", "--resume", step10, "--progress", "false"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = load_checkpoint(os.path.join(out, "two"))
    assert two.state["step"] == 20
    _close_checkpoints(two.path, load_checkpoint(single).path)


def test_cached_stream_shards_are_slices_of_the_global_batch(tmp_path):
    from matryoshka_ext.training.sources import CachedActivations, write_activation_cache

    src = SyntheticActivations(batch_size=100, seed=3)
    cache = write_activation_cache(src, 5 * B + 9, str(tmp_path / "c"), dtype=torch.float32, progress=False)
    whole = CachedActivations(cache, B, seed=1)
    parts = [CachedActivations(cache, B, seed=1, shard=(r, 2)) for r in range(2)]
    for _ in range(7):  # across an epoch boundary
        x, y = next(whole)
        got = [next(p) for p in parts]
        assert torch.equal(torch.cat([g[0] for g in got]), x) and torch.equal(torch.cat([g[1] for g in got]), y)
    assert parts[0].state_dict() == parts[1].state_dict() == whole.state_dict()  # a global position
    # that position resumes in any world size: a 1-rank stream continues where the 2-rank ones stopped
    resumed = CachedActivations(cache, B, seed=1)
    resumed.load_state_dict(parts[0].state_dict())
    assert torch.equal(next(resumed)[0], next(whole)[0])


def test_split_layers_and_buffer_regrid():
    assert split_layers([8, 12, 17], DistContext(rank=0, world_size=2)) == [8, 17]
    assert split_layers([8, 12, 17], DistContext(rank=1, world_size=2)) == [12]
    # 2 old ranks consumed 5 and 4 contexts: global 0,2,4,6,8 and 1,3,5,7 -> restart at global 9
    old = [{"position": 5, "layers": [3]}, {"position": 4, "layers": [3]}]
    assert [regrid_buffer_state(old, 2, r, 3)["position"] for r in range(3)] == [3, 3, 3]  # 9, 10, 11
    assert regrid_buffer_state(old, 2, 0, 1)["position"] == 9
    assert regrid_buffer_state([{"position": 7, "layers": [3]}], 1, 1, 2)["position"] == 3  # 7 -> global 7
    with pytest.raises(ValueError, match="divisible"):
        DistContext(rank=0, world_size=3).shard(64)


def test_ctrl_c_under_torchrun_checkpoints_on_every_rank(tmp_path):
    """A terminal's Ctrl-C reaches torchrun, which forwards SIGINT to its workers (each in its own session) at
    slightly different steps: the ranks agree on one step, finish it, rank 0 checkpoints it, and none aborts."""
    import signal
    import time

    env = _torchrun_env()
    args = [a for a in SMALL]
    args[args.index("--total-tokens") + 1] = str(64 * 10**6)  # far more than it gets to
    args[args.index("--ckpt-every") + 1] = "0"  # so the only checkpoint is the interrupt's
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "matryoshka_ext.cli", "train", *args, "--out-dir", str(tmp_path), "--run-name", "r"]
    p = subprocess.Popen(
        cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    run = tmp_path / "r"
    deadline = time.monotonic() + 120
    while not (run / "config.yaml").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    time.sleep(2)  # well into the training loop
    assert p.poll() is None, p.communicate()[0][-3000:]
    os.killpg(p.pid, signal.SIGINT)
    text = p.communicate(timeout=120)[0]
    assert "interrupted: continue with" in text, text[-3000:]
    assert "KeyboardInterrupt" not in text, text[-3000:]
    (step, path), = checkpoint_dirs(str(run))
    ck = load_checkpoint(path)
    assert ck.state["step"] == step > 0 and ck.state["tokens_seen"] == 64 * step
