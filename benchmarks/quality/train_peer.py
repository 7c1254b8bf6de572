"""Train one peer row with the peer library's own training code; run inside .venv-bench as a subprocess:

    .venv-bench/bin/python -m benchmarks.quality.train_peer --impl saelens --mode sae --cache TRAIN_CACHE \
        --out DIR --seed 0 --k 32 --groups 256,256,512,1024,2048 --batch 2048 --tokens 1200000 [--seconds S]

impl       what runs each step (the body of that library's trainer, on our cached batches)
saelens    MatryoshkaBatchTopKTrainingSAE in SAETrainer.step (its defaults: lr 3e-4 constant, Adam, AuxK 1.0,
           decoder-norm rescaling); SAE only
dictionary_learning  MatryoshkaBatchTopKTrainer.update(step, x) (geometric-median b_dec, AuxK 1/32, decoder-grad
           projection, warmup + decay schedule, its threshold EMA); SAE only
sparsify   SparseCoder per-row TopK, flat (no nesting); its Trainer's defaults: fvu loss, signum optimizer
           (SignSGD in ScheduleFreeWrapper, lr 5e-3/sqrt(F/2^14)), auxk 0, first-batch bias init; --skip adds
           its skip connection; transcoder (transcode=True) or SAE

Every peer sees activations scaled by one scalar per site to E||x||^2 = d (dictionary_learning's and SAELens'
normalisation convention); the scale is folded back before export, so exports are in raw units. Step-count
defaults that assume far longer runs (dictionary_learning's 1000 warmup / threshold-start steps) are capped at
10% of the run and recorded under "adjusted". ``--seconds``: stop once training has run that long (equal
wall-clock budget); ``--tokens`` then sizes the schedules. Prints one JSON line (timing, steps, paths).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from . import exchange
from .caches import train_stream


def _scale(t: torch.Tensor) -> float:
    """s with E||s t||^2 = d."""
    return float((t.shape[1] / t.pow(2).sum(1).mean()).sqrt())


def _parity(path: str, x: torch.Tensor, ref: torch.Tensor, saelens_ends: list[int] | None = None) -> dict[str, float]:
    """How far the exported folder, read back as the harness reads it (our BaseTranscoder), is from the peer's
    own inference output ``ref`` on raw rows x: the check that every row is scored as its library would run it."""
    with torch.no_grad():
        tc = exchange.load_saelens(path, saelens_ends, "peer") if saelens_ends else exchange.load(path)
        got = tc.reconstruct(x)
    return {"export_rel_err": float((got - ref).norm() / ref.norm().clamp_min(1e-30))}


class _Run:
    """The shared loop: batches, scaling, step/time budget, timing (setup excluded from train time)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.stream = train_stream(a.cache, a.batch, a.seed, a.mode)
        x0, y0 = next(self.stream)
        self.stream.load_state_dict({"epoch": 0, "position": 0})  # the first batch is step 0's again
        self.sx, self.sy = _scale(x0), _scale(y0)
        self.d_in, self.d_out = x0.shape[1], y0.shape[1]
        self.steps = a.tokens // a.batch
        self.adjusted: dict[str, Any] = {}

    def sample_x(self, n: int = 1024) -> torch.Tensor:
        """Raw input rows for the export check (the first rows of the train cache)."""
        from matryoshka_ext.training.sources import CachedActivations

        x, _ = next(CachedActivations(self.a.cache, 1, mode="mmap").ordered_batches(n))
        return x

    def batches(self):
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(self.steps):
            if self.a.seconds and time.perf_counter() - t0 >= self.a.seconds:
                break
            x, y = next(self.stream)
            yield step, x * self.sx, y * self.sy
            self.done = step + 1
        self.train_s = time.perf_counter() - t0
        self.train_cpu_s = time.process_time() - c0  # CPU seconds: the cost with the box's load taken out


def train_saelens(r: _Run) -> tuple[str, dict[str, Any]]:
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    a = r.a
    if a.mode != "sae":
        raise SystemExit("SAELens' Matryoshka BatchTopK is an SAE: use --mode sae")
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=r.d_in, d_sae=a.dict_size, k=a.k, matryoshka_widths=a.ends)
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    # lr_end: its runner config fills it in (lr / 10); the default scheduler is constant, so it is unused
    tcfg = SAETrainerConfig(total_training_samples=r.steps * a.batch, train_batch_size_samples=a.batch, lr_end=3e-5)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=iter(()))
    for _, x, _ in r.batches():
        trainer.step(x)
        trainer.n_training_steps += 1  # step() leaves this to its caller (fit() does it)
    sae.fold_activation_norm_scaling_factor(r.sx)  # raw units (SAELens' own fold)
    path = os.path.join(a.out, "saelens")
    sae.save_inference_model(path)
    # the inference folder as SAELens itself reads it back (JumpReLU at its learned top-k threshold)
    from sae_lens import SAE

    inf = SAE.load_from_disk(path, device="cpu")
    x = r.sample_x()
    with torch.no_grad():
        ref = inf.decode(inf.encode(x))
    return path, {"format": "saelens", "lr": tcfg.lr, "prefix_ends": a.ends, **_parity(path, x, ref, a.ends)}


def train_dictionary_learning(r: _Run) -> tuple[str, dict[str, Any]]:
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

    a = r.a
    if a.mode != "sae":
        raise SystemExit("dictionary_learning's Matryoshka BatchTopK is an SAE: use --mode sae")
    cap = r.steps // 10  # its schedule needs warmup_steps < steps
    warm, start = min(1000, cap), min(1000, cap)
    r.adjusted = {"warmup_steps": [1000, warm], "threshold_start_step": [1000, start]}
    tr = MatryoshkaBatchTopKTrainer(
        steps=r.steps, activation_dim=r.d_in, dict_size=a.dict_size, k=a.k, layer=0, lm_name="quality",
        group_fractions=[s / a.dict_size for s in a.groups], warmup_steps=warm, threshold_start_step=start,
        seed=a.seed, device="cpu",
    )  # fmt: skip
    for step, x, _ in r.batches():
        tr.update(step, x)
    ae = tr.ae
    w = {"W_enc": ae.W_enc.data, "b_enc": ae.b_enc.data, "W_dec": ae.W_dec.data, "b_dec": ae.b_dec.data,
         "input_bias": ae.b_dec.data, "threshold": ae.threshold.data.float().reshape(())}  # fmt: skip
    w = exchange.fold_scales(w, r.sx, r.sy)
    meta = {"activation": "jumprelu", "prefix_ends": a.ends, "name": a.name, "lr": tr.lr}
    path = os.path.join(a.out, "exchange")
    exchange.save(path, w, meta)
    x = r.sample_x()
    with torch.no_grad():
        ref = ae.decode(ae.encode(x * r.sx, use_threshold=True)) / r.sy  # its own inference path
    return path, {"format": "exchange", "lr": tr.lr, "threshold": float(ae.threshold), **_parity(path, x, ref)}


def train_sparsify(r: _Run) -> tuple[str, dict[str, Any]]:
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    a = r.a
    torch.manual_seed(a.seed)
    transcode = a.mode == "transcoder"
    cfg = SparseCoderConfig(num_latents=a.dict_size, k=a.k, transcode=transcode, skip_connection=a.skip)
    sae = SparseCoder(r.d_in, cfg, device="cpu", dtype=torch.float32)
    if transcode and r.d_out != r.d_in:
        raise SystemExit("sparsify transcoders have d_out == d_in")
    lr = 5e-3 / (sae.num_latents / 2**14) ** 0.5  # its TrainConfig default for the default 'signum' optimizer
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()
    for step, x, y in r.batches():
        if step == 0:  # its Trainer's first-batch init
            if transcode:
                sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = y.mean(0)
        if cfg.normalize_decoder and not transcode:
            sae.set_decoder_norm_to_unit_norm()
        total_variance = (y - y.mean(0)).pow(2).sum()
        out = sae(x=x, y=None if not transcode else y, total_variance=total_variance)
        out.fvu.backward()  # auxk_alpha defaults to 0 in its TrainConfig
        if cfg.normalize_decoder and not transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    opt.eval()  # schedule-free: the evaluation weights (its Trainer does this before saving)
    if cfg.normalize_decoder and not transcode:
        sae.set_decoder_norm_to_unit_norm()
    w = {"W_enc": sae.encoder.weight.data.T, "b_enc": sae.encoder.bias.data, "W_dec": sae.W_dec.data,
         "b_dec": sae.b_dec.data, "input_bias": None if transcode else sae.b_dec.data,
         "W_skip": None if sae.W_skip is None else sae.W_skip.data.T}  # fmt: skip
    w = exchange.fold_scales(w, r.sx, r.sy)
    meta = {"activation": "topk", "k": a.k, "prefix_ends": None, "name": a.name, "lr": lr}
    path = os.path.join(a.out, "exchange")
    exchange.save(path, w, meta)
    x = r.sample_x()
    with torch.no_grad():
        ref = sae(x=x * r.sx).sae_out / r.sy  # its own forward (per-row TopK, skip included)
    return path, {"format": "exchange", "lr": lr, **_parity(path, x, ref)}


TRAIN = {"saelens": train_saelens, "dictionary_learning": train_dictionary_learning, "sparsify": train_sparsify}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=sorted(TRAIN), required=True)
    p.add_argument("--mode", choices=("transcoder", "sae"), required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="peer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--groups", required=True, help="comma-separated group sizes (their sum = dictionary size)")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--skip", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    a.groups = [int(s) for s in a.groups.split(",")]
    a.dict_size = sum(a.groups)
    a.ends = [sum(a.groups[: i + 1]) for i in range(len(a.groups))]
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    # sparsify picks its Triton decoder at import whenever triton imports; Triton has no CPU backend here
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    r = _Run(a)
    r.done = 0
    path, info = TRAIN[a.impl](r)
    res = {"path": path, "train_s": r.train_s, "train_cpu_s": r.train_cpu_s, "threads": torch.get_num_threads(),
           "total_s": time.perf_counter() - t0, "steps": r.done, "tokens": r.done * a.batch, "scales": [r.sx, r.sy],
           "adjusted": r.adjusted, **info}  # fmt: skip
    with open(os.path.join(a.out, "train.json"), "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
