"""The training loop: one readable `Trainer` over any resumable activation stream.

Step s (0-based):  batch s -> forward (nested loss + AuxK) -> backward -> project decoder grad -> clip ->
finiteness check -> Adam step -> renormalise decoder rows -> dead counters and JumpReLU threshold update ->
lr schedule advances. Metrics come from that same forward (no extra pass).

Numerical faults: a batch whose loss or gradient norm is NaN/Inf is skipped before anything is updated
(weights, Adam moments, dead counters, threshold, schedule, step) and counted (`nonfinite_skipped`, logged as
`train/nonfinite_skipped`); `cfg.max_nonfinite_in_a_row` consecutive skips stop the run with
`NonFiniteTrainingError` (the last checkpoint stays the newest). A checkpoint is never written from non-finite
weights. The check costs one device->host sync per step, as AMP's GradScaler does.

Exact resume: a checkpoint after step s holds the model (with its buffers), Adam state, scheduler step,
RNG states and the stream's position after s + 1 batches, so later steps replay identically (bit-exact on
CPU).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import TrainConfig
from ..transcoder import MatryoshkaTranscoder
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import DistContext
from .metrics import RunLogger, evaluate, step_metrics
from .optim import make_optimizer
from .schedule import WarmupCosine

FORMAT_VERSION = 1


class NonFiniteTrainingError(RuntimeError):
    """Training produced NaN/Inf too many steps in a row, or non-finite weights were about to be saved."""


class ActivationStream(Protocol):
    """What the trainer needs from data: batches (x [B, d_in], y [B, d_out]) and a resumable position."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: str
    checkpoint: str
    transcoder_dir: str
    step: int
    tokens_seen: int
    wall_time_s: float
    group_ends: list[int] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    interrupted: bool = False

    def summary_lines(self, resume_command: str | None = None) -> list[str]:
        """Human-readable summary: per-prefix FVU, L0, dead fraction and the paths. `resume_command` is the
        command an interrupted run suggests (default: `matryoshka-ext train --resume <run_dir>`)."""
        group_ends = self.group_ends
        src = "held-out" if self.eval else "last training batch"
        lines = [f"trained {self.step} steps, {self.tokens_seen:,} tokens in {self.wall_time_s:.0f} s"]
        if self.interrupted:
            resume = resume_command or f"matryoshka-ext train --resume {self.run_dir}"
            lines.append(f"interrupted: continue with  {resume}")
        if not self.eval and not self.last_metrics:  # stopped before the first logged step
            lines.append(f"checkpoint: {os.path.abspath(self.checkpoint)}")
            return lines
        if self.eval:
            fvu, l0, dead = self.eval["fvu"], self.eval["l0"], self.eval["dead_fraction"]
        else:
            m = self.last_metrics
            fvu = [m[f"prefix_{i + 1}/fvu"] for i in range(len(group_ends))]
            l0, dead = m["l0_norm"], m["sparsity/dead_features_fraction"]
        lines.append(f"per-prefix FVU ({src}):")
        for i, (e, v) in enumerate(zip(group_ends, fvu)):
            lines.append(f"  prefix {i + 1} (latents [0, {e})): FVU {v:.4f}")
        lines.append(f"L0 {l0:.2f}   dead latents {100 * dead:.2f}%")
        if self.eval and "fvu_jumprelu" in self.eval:
            fj = ", ".join(f"{v:.4f}" for v in self.eval["fvu_jumprelu"])
            lines.append(
                f"JumpReLU inference (threshold from training): FVU {fj}; L0 {self.eval['l0_jumprelu']:.2f}"
            )
        lines.append(f"checkpoint: {os.path.abspath(self.checkpoint)}")
        lines.append(f"transcoder (raw-activation weights): {os.path.abspath(self.transcoder_dir)}")
        return lines


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


class Trainer:
    """Trains a MatryoshkaTranscoder on `data` as `cfg` says; `run()` does everything including resume.

    data        an ActivationStream (iterable of (x, y) with state_dict / load_state_dict)
    run_dir     where checkpoints/, transcoder/, metrics.jsonl and the W&B run go
    eval_data   optional callable returning held-out batches for the final report
    dist        data-parallel context (default: torch.distributed's world if initialized, else one process):
                `data` yields this rank's share of each global batch; see training/distributed.py

    `run()` = `begin()`, `step_once()` until `done`, `finish()`; the step-wise form lets one loop drive
    several trainers in lockstep (training/multi.py: many layers from one pass of the LM).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: ActivationStream,
        run_dir: str,
        device: torch.device | str | None = None,
        eval_data: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
        dist: DistContext | None = None,
        callbacks: Sequence[Callable[[int, MatryoshkaTranscoder], Any]] = (),
    ) -> None:
        self.cfg = cfg
        # called as cb(step, model) after every completed step, on rank 0 only, under no_grad; they must leave
        # the model's state alone (eval.SamplesHook, run by `samples_every`, does and is tested to)
        self.callbacks = list(callbacks)
        # data parallel: the ranks training this transcoder together (default: torch.distributed's world)
        self.dist = dist if dist is not None else DistContext.current()
        self._ddp: torch.nn.Module | None = None
        self._logger: RunLogger | None = None
        self._interrupted = False
        self.data = data
        self.run_dir = run_dir
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.eval_data = eval_data
        self.model: MatryoshkaTranscoder | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: WarmupCosine | None = None
        self.step = 0
        self.tokens_seen = 0
        self.wandb_id: str | None = None
        self._iter: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_checkpoint: str | None = None
        self.nonfinite_skipped = 0  # batches skipped for a NaN/Inf loss or gradient, over the whole run
        self._nonfinite_run = 0  # ... and in a row, up to now
        # cfg.ema_decay > 0: the parameter average that finish() saves (see _ema_update / _final_weights)
        self.ema: dict[str, torch.Tensor] | None = None
        # cfg.density_cap > 0: running firing rate per latent (see _cap_density)
        self.density: torch.Tensor | None = None
        self._last_x: torch.Tensor | None = None

    # --------------------------------------------------------------------------------------------------
    # setup

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is not None:
            batch, self._pending = self._pending, None
        else:
            if self._iter is None:
                self._iter = iter(self.data)
            batch = next(self._iter)
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _build_optim(self) -> None:
        cfg = self.cfg
        assert self.model is not None
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, (cfg.adam_beta1, cfg.adam_beta2))
        self.scheduler = WarmupCosine(self.optimizer, cfg.total_steps, cfg.lr, cfg.final_lr, cfg.warmup_steps)

    def setup(self) -> None:
        """Fresh start (seed, first batch -> dims, scales and b_dec) or resume from `cfg.resume`."""
        cfg = self.cfg
        if cfg.resume:
            self._resume(cfg.resume)
            return
        seed_everything(cfg.seed)
        if self._iter is None:
            self._iter = iter(self.data)
        x, y = next(self._iter)
        self._pending = (x, y)
        tc = cfg.transcoder
        for name, have in (("d_in", x.shape[1]), ("d_out", y.shape[1])):
            want = getattr(tc, name)
            if want is not None and want != have:
                raise ValueError(f"transcoder.{name}={want} but the activations have width {have}")
        tc = tc.replace(d_in=x.shape[1], d_out=y.shape[1])
        self.cfg = cfg = cfg.replace(transcoder=tc)
        self.model = MatryoshkaTranscoder(tc).to(self.device)  # init on CPU from the seeded global RNG
        # data parallel: every rank initialises from the whole first global batch (gathered in rank order),
        # so all ranks start identical, and identical to a one-process run on the same global stream
        gx, gy = self.dist.all_gather_rows(x.to(self.device)), self.dist.all_gather_rows(y.to(self.device))
        self.model.initialize_from_batch(gx, gy)
        self.model.train()
        self._build_optim()
        self._init_ema()

    def _resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        st = ckpt.state
        saved = TrainConfig.from_dict(st["config"])
        tc = saved.transcoder
        mine = self.cfg.transcoder
        for f in ("dict_size", "group_sizes", "k", "selection", "d_in", "d_out", "skip_connection"):
            if getattr(mine, f) is not None and getattr(mine, f) != getattr(tc, f):
                raise ValueError(
                    f"--resume: transcoder.{f}={getattr(mine, f)!r} differs from the checkpoint's "
                    f"{getattr(tc, f)!r}"
                )
        self.cfg = self.cfg.replace(transcoder=mine.replace(d_in=tc.d_in, d_out=tc.d_out))
        self.model = MatryoshkaTranscoder(self.cfg.transcoder, device=self.device)
        self.model.load_state_dict(ckpt.model)
        self.model.train()
        self._build_optim()
        assert self.optimizer is not None and self.scheduler is not None
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(st["scheduler"])
        self.data.load_state_dict(st["data"])
        restore_rng_state(st["rng"])
        self.step = int(st["step"])
        self.tokens_seen = int(st["tokens_seen"])
        self.wandb_id = st.get("wandb_id")
        self.nonfinite_skipped = int(st.get("nonfinite_skipped", 0))
        self.last_checkpoint = ckpt.path
        self._init_ema()
        if self.density is not None and st.get("density") is not None:
            self.density.copy_(st["density"])
        if self.ema is not None and st.get("ema") is not None:
            for name, t in st["ema"].items():
                self.ema[name].copy_(t)

    # --------------------------------------------------------------------------------------------------
    # steps

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.autocast_bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        """One optimiser step on a batch x [B, d_in], y [B, d_out]; returns the TranscoderOutput of its forward,
        or None when the batch was skipped because its loss or gradient norm was not finite (then nothing was
        updated; see the module docstring)."""
        model, opt, sched = self.model, self.optimizer, self.scheduler
        assert model is not None and opt is not None and sched is not None
        with self._autocast():
            out = self._module()(x, y, update_stats=False)  # counters/threshold update only once the step is known good
        out.loss.backward()
        model.project_decoder_grad()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if self.dist.any(not bool(torch.isfinite(out.loss.detach()) & torch.isfinite(grad_norm)), self.device):
            opt.zero_grad(set_to_none=True)
            self._skip_nonfinite(float(out.loss.detach()), float(grad_norm))
            return None
        self._nonfinite_run = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.normalize_decoder()
        self._last_x = x
        world = self.dist.world_size
        model.update_stats(out.acts, x.shape[0] * world, sync=self._sync_stats if world > 1 else None)
        self._cap_density(out.acts, x.shape[0])
        self._revive_dead()
        self._ema_update()  # after every change this step makes to the parameters
        sched.step()
        self.step += 1
        self.tokens_seen += x.shape[0] * world
        return out

    # --------------------------------------------------------------------------------------------------
    # parameter averaging (cfg.ema_decay)

    def _init_ema(self) -> None:
        assert self.model is not None
        if self.cfg.ema_decay > 0:
            self.ema = {n: p.detach().float().clone() for n, p in self.model.named_parameters()}
        if self.cfg.density_cap > 0:
            self.density = torch.zeros(self.model.cfg.dict_size, device=self.device, dtype=torch.float32)

    DENSITY_MOMENTUM = 0.99

    @torch.no_grad()
    def _cap_density(self, acts: Any, n_rows: int) -> None:
        """density <- m * density + (1 - m) * (fraction of this batch's rows each latent fired on); every latent
        above cfg.density_cap gets b_enc -= density_cap_rate * threshold (the JumpReLU threshold: the scale of a
        selected activation). Data parallel: the rates are averaged over the ranks (equal shares), so every rank
        applies the update one process would make on the global batch."""
        if self.density is None:
            return
        model = self.model
        assert model is not None
        fired = acts.indices[acts.values > 0]
        rate = torch.bincount(fired.long(), minlength=self.density.numel()).float() / max(n_rows, 1)
        if self.dist.enabled:
            rate = self.dist.all_reduce(rate, "mean")
        self.density.lerp_(rate, 1.0 - self.DENSITY_MOMENTUM)
        over = (self.density > self.cfg.density_cap).to(model.b_enc.dtype)
        model.b_enc.sub_(over * (self.cfg.density_cap_rate * model.threshold).to(model.b_enc.dtype))

    @torch.no_grad()
    def _ema_update(self) -> None:
        """ema <- d * ema + (1 - d) * param after each good step, d = min(ema_decay, (1 + t) / (10 + t)) with t
        the steps done before this one (early steps, far from the end, are forgotten quickly)."""
        if self.ema is None:
            return
        assert self.model is not None
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for n, p in self.model.named_parameters():
            self.ema[n].lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def _final_weights(self) -> None:
        """The weights finish() saves: the parameter average (cfg.ema_decay > 0) in place of the last ones,
        with unit decoder rows (averaged or free rows folded: ``fold_decoder_norms``), then the JumpReLU
        threshold recalibrated for that encoder on the last training batch (the smallest positive activation the
        training selection keeps). A unit-norm run without averaging is saved as it is."""
        model = self.model
        assert model is not None
        if self.ema is None and model.cfg.decoder_norm != "free":
            return
        if self.ema is not None:
            for n, p in model.named_parameters():
                p.copy_(self.ema[n].to(p.dtype))
        model.fold_decoder_norms()
        if self._last_x is not None:
            acts = model.encode(self._last_x, mode=self.cfg.transcoder.selection)
            vals = acts.values.float()
            vals = vals[vals > 0]
            if vals.numel():
                model.threshold.fill_(float(vals.min()))

    @torch.no_grad()
    def _revive_dead(self) -> None:
        """b_enc += revive_rate * threshold for every latent the model counts dead (cfg.revive_rate > 0): its
        pre-activation rises until the selection picks it, and the main loss trains it from there."""
        if self.cfg.revive_rate <= 0:
            return
        model = self.model
        assert model is not None
        dead = model.dead_mask().to(model.b_enc.dtype)
        model.b_enc.add_(dead * (self.cfg.revive_rate * model.threshold).to(model.b_enc.dtype))

    def _module(self) -> torch.nn.Module:
        """What the training forward calls: the model, wrapped in DistributedDataParallel across ranks."""
        assert self.model is not None
        if not self.dist.enabled:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            # no per-forward buffer sync: the counters and threshold are kept identical by _sync_stats, and
            # DDP's broadcast of rank 0's buffers would only add traffic (the flag's name changed in torch 2.14)
            params = inspect.signature(DistributedDataParallel.__init__).parameters
            no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
            self._ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                process_group=self.dist.group,
                **no_sync,
            )
        return self._ddp

    def _sync_stats(self, fired: torch.Tensor, batch_min: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fired [F] bool -> fired on any rank; batch_min [] -> smallest over ranks (see update_stats)."""
        f = self.dist.all_reduce(fired.to(torch.int32), "max")
        m = self.dist.all_reduce(batch_min.float().reshape(1).clone(), "min")
        return f.bool(), m[0]

    def _skip_nonfinite(self, loss: float, grad_norm: float) -> None:
        self.nonfinite_skipped += 1
        self._nonfinite_run += 1
        limit = self.cfg.max_nonfinite_in_a_row
        print(
            f"step {self.step}: non-finite loss {loss} / gradient norm {grad_norm}; batch skipped "
            f"({self._nonfinite_run} in a row, limit {limit}; {self.nonfinite_skipped} in this run)",
            file=sys.stderr,
        )
        if self._nonfinite_run >= limit:
            where = self.last_checkpoint or "none yet"
            raise NonFiniteTrainingError(
                f"{self._nonfinite_run} non-finite steps in a row at step {self.step} (max_nonfinite_in_a_row="
                f"{limit}); weights were left untouched. Last checkpoint: {where}. Check the activations for "
                f"NaN/Inf, or lower lr."
            )

    def save(self) -> str:
        """Checkpoint the current state (atomic; prunes to keep_last)."""
        assert self.model is not None and self.optimizer is not None and self.scheduler is not None
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteTrainingError(
                f"refusing to checkpoint non-finite parameters {bad} at step {self.step}; "
                f"the last good checkpoint is {self.last_checkpoint or 'none'}"
            )
        state = {
            "format_version": FORMAT_VERSION,
            "config": self.cfg.replace(resume=None).to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "data": self.data.state_dict(),
            "wandb_id": self.wandb_id,
            "nonfinite_skipped": self.nonfinite_skipped,
        }
        if self.ema is not None:
            state["ema"] = {n: t.detach() for n, t in self.ema.items()}
        if self.density is not None:
            state["density"] = self.density.detach()
        if self.dist.is_main:  # all ranks hold the same state; only rank 0 writes it
            self.last_checkpoint = save_checkpoint(
                self.run_dir,
                self.step,
                self.model.state_dict(),
                self.optimizer.state_dict(),
                state,
                keep_last=self.cfg.keep_last,
            )
        # also a barrier: no rank runs ahead of a checkpoint that is still being written
        self.last_checkpoint = self.dist.broadcast_object(self.last_checkpoint)
        return self.last_checkpoint

    # --------------------------------------------------------------------------------------------------
    # the loop

    def begin(self, max_steps: int | None = None) -> None:
        """Set up (fresh or resumed), open the run's logger (rank 0) and fix the step this session ends at:
        cfg.total_steps, or `max_steps` more steps."""
        self._t0 = time.perf_counter()
        if self.model is None:
            self.setup()
        cfg = self.cfg
        assert self.model is not None and self.scheduler is not None
        if self.dist.is_main:  # one writer of config.yaml, metrics.jsonl and the W&B run
            os.makedirs(self.run_dir, exist_ok=True)
            cfg.save(os.path.join(self.run_dir, "config.yaml"))
            self._logger = RunLogger(
                self.run_dir,
                cfg.to_dict(),
                total_tokens=cfg.total_steps * cfg.batch_tokens,
                initial_tokens=self.tokens_seen,
                wandb_mode=cfg.wandb_mode,
                wandb_project=cfg.wandb_project,
                wandb_entity=cfg.wandb_entity,
                run_name=os.path.basename(os.path.normpath(self.run_dir)),
                wandb_id=self.wandb_id,
                progress=cfg.progress,
            )
            self.wandb_id = self._logger.wandb_id
        self._end = cfg.total_steps if max_steps is None else min(cfg.total_steps, self.step + max_steps)
        self.last_metrics: dict[str, float] = {}
        self._saved_at = self.step if self.last_checkpoint else -1
        self._window_t, self._window_tok = time.perf_counter(), 0

    @property
    def done(self) -> bool:
        """Whether this session reached the step `begin` set."""
        return self.step >= self._end

    def step_once(self) -> None:
        """Next batch, one train_step, then the metrics and the periodic checkpoint the config asks for."""
        cfg = self.cfg
        assert self.model is not None and self.scheduler is not None
        x, y = self._next_batch()
        lr = self.scheduler.current_lr()
        out = self.train_step(x, y)
        if out is None:  # skipped: non-finite loss or gradient (counted; see train_step)
            return
        n = x.shape[0] * self.dist.world_size  # global tokens of this step
        self._window_tok += n
        if self._logger is not None:
            self._logger.advance(n)
        if self.step % cfg.log_every == 0 or self.step == self._end:
            now = time.perf_counter()
            tps = self._window_tok / max(now - self._window_t, 1e-9)
            reduce = (lambda t: self.dist.all_reduce(t, "mean")) if self.dist.enabled else None
            self.last_metrics = step_metrics(out, self.model, lr, self.tokens_seen, tps, reduce=reduce)
            self.last_metrics["train/nonfinite_skipped"] = float(self.nonfinite_skipped)
            if self._logger is not None:
                self._logger.log(self.last_metrics, self.step)
            self._window_t, self._window_tok = now, 0
        if self.callbacks and self.dist.is_main:
            with torch.no_grad():
                for cb in self.callbacks:
                    cb(self.step, self.model)
        if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < self._end:
            self.save()
            self._saved_at = self.step

    def should_stop(self, stop: _GracefulStop) -> bool:
        """A Ctrl-C here; across ranks, a Ctrl-C on any rank (agreed every step, one tiny all-reduce, so all
        ranks stop together, checkpoint and exit well within torchrun's shutdown timeout, 30 s by default)."""
        if self.dist.enabled:
            self._interrupted = self.dist.any(stop.requested, self.device)
        else:
            self._interrupted = stop.requested
        return self._interrupted

    def finish(self) -> TrainResult:
        """Final checkpoint (unless this step has one), the saved transcoder and the held-out evaluation
        (rank 0 writes and evaluates; the others wait)."""
        model, cfg = self.model, self.cfg
        assert model is not None
        if self._saved_at != self.step:
            self.save()
        transcoder_dir = os.path.join(self.run_dir, "transcoder")
        ev = None
        self._final_weights()  # from here on the model holds the saved weights (the checkpoint: the live ones)
        if self.dist.is_main:
            model.save_pretrained(transcoder_dir)
            ev = evaluate(model, self.eval_data(), self.device) if self.eval_data is not None else None
            if ev is not None and self._logger is not None:
                self._logger.summary({f"eval/prefix_{i + 1}/fvu": v for i, v in enumerate(ev["fvu"])})
        self.dist.barrier()
        assert self.last_checkpoint is not None
        return TrainResult(
            run_dir=self.run_dir,
            checkpoint=self.last_checkpoint,
            transcoder_dir=transcoder_dir,
            step=self.step,
            tokens_seen=self.tokens_seen,
            wall_time_s=time.perf_counter() - self._t0,
            group_ends=cfg.transcoder.group_ends,
            last_metrics=self.last_metrics,
            eval=ev,
            interrupted=self._interrupted,
        )

    def close(self) -> None:
        """Close the logger (W&B run, metrics file, progress bar)."""
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train to cfg.total_steps (or `max_steps` more steps), checkpoint, save the transcoder, evaluate."""
        self.begin(max_steps)
        stop = _GracefulStop()
        try:
            while not self.done and not self.should_stop(stop):
                self.step_once()
            stop.restore()
            return self.finish()
        finally:
            stop.restore()
            self.close()


class _GracefulStop:
    """First Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption notice, e.g. SLURM before its SIGKILL): finish
    the current step, checkpoint and stop (resumable). A second Ctrl-C: abort at once."""

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested:
            # a launcher may deliver one Ctrl-C twice (the terminal's, and its own forwarded copy, when its
            # workers share the terminal's process group): a repeat within a second is that echo
            if now - self._first < 1.0 or signum == signal.SIGTERM:
                return
            raise KeyboardInterrupt
        self.requested = True
        self._first = now
        what = "SIGTERM" if signum == signal.SIGTERM else "interrupted"
        print(f"\n{what}: checkpointing after this step (Ctrl-C again to abort)", file=sys.stderr)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
