"""One whole training step per implementation, built for the same case (shapes, k, groups, dead latents).

A step is: encode, BatchTopK select, nested (Matryoshka) loss over every prefix, AuxK on the dead latents,
backward, gradient clip where the library's trainer clips, Adam step, decoder-norm upkeep where the library
does it. Every builder returns `step()`; it runs on the case's device and returns nothing.

Implementations:
  ours      MatryoshkaTranscoder + the Trainer's step (mx kernels; fused Adam)
  ours-noaux  the same with no dead latents, so AuxK is idle: what AuxK costs us
  dense     the seed's way: dense relu(pre), torch.topk over all N*F values, a dense mask, one dense decode per
            prefix, dense AuxK, autograd, torch Adam
  floor     what no implementation can skip: one encoder GEMM and one fused Adam step over all parameters
  sae_lens, dictionary_learning, sparsify: the peers' own training code (benchmarks/peers.py)

The peers import only inside their builders, so this module runs where they are absent (the GPU box).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Latents marked dead before every step, so that AuxK does its work in every implementation (at random init
# nothing is dead and each library would skip it). The same latents in every implementation.
DEAD_FRACTION = 0.1


@dataclass(frozen=True)
class Case:
    impl: str
    device: str = "cpu"
    n: int = 4096  # tokens per step
    d: int = 640  # d_in == d_out
    f: int = 8192  # latents
    k: int = 32
    groups: int = 4
    dtype: str = "float32"  # compute dtype; "bfloat16" = bf16 autocast over fp32 parameters (our trainer's GPU mode)

    @property
    def group_ends(self) -> list[int]:
        """Prefix ends doubling up to F: F/2^(m-1), ..., F/2, F."""
        return [self.f >> (self.groups - 1 - i) for i in range(self.groups)]

    @property
    def group_sizes(self) -> list[int]:
        ends = self.group_ends
        return [b - a for a, b in zip([0] + ends[:-1], ends)]

    @property
    def aux_k(self) -> int:
        # d/2 is what dictionary_learning and sparsify hard-code; the others are set to match.
        return self.d // 2

    def to_dict(self) -> dict:
        return asdict(self)


def make_data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [N, d] fp32 on the device: y depends on x (a transcoder target), both with unit-scale entries."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.n, case.d, generator=g)
    mix = torch.randn(case.d, case.d, generator=g) / math.sqrt(case.d)
    y = torch.tanh(x @ mix) + 0.1 * torch.randn(case.n, case.d, generator=g)
    return x.to(case.device), y.to(case.device)


def dead_latents(case: Case) -> torch.Tensor:
    """[F] bool: every 10th latent, spread over all groups (none for the "-noaux" variants)."""
    dead = torch.zeros(case.f, dtype=torch.bool)
    if not case.impl.endswith("-noaux"):
        dead[:: round(1 / DEAD_FRACTION)] = True
    return dead.to(case.device)


def _autocast(case: Case):
    enabled = case.dtype != "float32" and case.device != "cpu"
    return torch.autocast(device_type=torch.device(case.device).type, dtype=DTYPES[case.dtype], enabled=enabled)


def build_ours(case: Case):
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.training.optim import make_optimizer
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    cfg = TranscoderConfig(
        d_in=case.d,
        d_out=case.d,
        dict_size=case.f,
        group_sizes=case.group_sizes,
        k=case.k,
        selection="batch",
        aux_k=case.aux_k,
    )
    model = MatryoshkaTranscoder(cfg, device=case.device)
    x, y = make_data(case)
    model.initialize_from_batch(x, y)
    opt = make_optimizer(model.parameters(), lr=2e-4)
    dead = dead_latents(case)
    dead_tokens = cfg.dead_tokens

    def step():
        model.tokens_since_fired.masked_fill_(dead, dead_tokens)
        # The body of matryoshka_ext.training.Trainer.train_step (its lr scheduler aside).
        with _autocast(case):
            out = model(x, y)
        out.loss.backward()
        model.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.normalize_decoder()

    return step


class _Params(torch.nn.Module):
    """W_enc [d, F], b_enc, W_dec [F, d] with unit rows, b_dec: the layout every step below shares."""

    def __init__(self, case: Case):
        super().__init__()
        g = torch.Generator(device=case.device).manual_seed(1)  # on the device: Gemma-size init in milliseconds
        W = torch.randn(case.f, case.d, generator=g, device=case.device)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W)
        self.W_enc = torch.nn.Parameter(W.t().contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(case.f, device=case.device))
        self.b_dec = torch.nn.Parameter(torch.zeros(case.d, device=case.device))

    @torch.no_grad()
    def project_decoder_grad(self):
        g, W = self.W_dec.grad, self.W_dec
        g.sub_((g * W).sum(1, keepdim=True) * W)

    @torch.no_grad()
    def normalize_decoder(self):
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))


def build_dense(case: Case):
    """The seed's dense step: everything N x F, one dense decode per prefix, autograd does the rest."""
    p = _Params(case)
    x, y = make_data(case)
    opt = torch.optim.Adam(p.parameters(), lr=2e-4)
    dead = dead_latents(case)
    ends, n, k = case.group_ends, case.n, case.k

    def step():
        with _autocast(case):
            pre = x @ p.W_enc + p.b_enc
            post = torch.relu(pre)
            flat = post.flatten()
            top = torch.topk(flat, k * n, sorted=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, top, True).view_as(post)
            acts = post * mask
            loss = 0.0
            for e in ends:
                r = acts[:, :e] @ p.W_dec[:e] + p.b_dec
                loss = loss + (r.float() - y).pow(2).mean()
            residual = (y - r.float()).detach()
            aux_pre = post.masked_fill(~dead, 0.0)
            vals, idx = torch.topk(aux_pre, case.aux_k, dim=1)
            aux_acts = torch.zeros_like(aux_pre).scatter(1, idx, vals)
            aux = (aux_acts @ p.W_dec).float()
            loss = loss + (aux - residual).pow(2).mean() / 32
        loss.backward()
        p.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(p.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        p.normalize_decoder()

    return step


def build_floor(case: Case):
    """The floor: one encoder GEMM (compute dtype, weights already cast) and one fused Adam step."""
    p = _Params(case)
    x, _ = make_data(case)
    dt = DTYPES[case.dtype]
    xs, W = x.to(dt), p.W_enc.detach().to(dt)
    opt = torch.optim.Adam(p.parameters(), lr=2e-4, fused=True)
    for t in p.parameters():
        t.grad = torch.randn_like(t) * 1e-3

    def step():
        torch.mm(xs, W)
        opt.step()

    return step


def builders() -> dict:
    from . import peers

    return {
        "ours": build_ours,
        "ours-noaux": build_ours,
        "dense": build_dense,
        "floor": build_floor,
        "sae_lens": peers.build_sae_lens,
        "dictionary_learning": peers.build_dictionary_learning,
        "sparsify": peers.build_sparsify,
    }


# What each case imports: loaded before the worker reads its baseline RSS, so "step memory" leaves them out.
PRELOAD = {
    "ours": ["matryoshka_ext.transcoder", "matryoshka_ext.training.optim"],
    "ours-noaux": ["matryoshka_ext.transcoder", "matryoshka_ext.training.optim"],
    "sae_lens": ["sae_lens"],
    "dictionary_learning": ["dictionary_learning.trainers.matryoshka_batch_top_k"],
    "sparsify": ["sparsify"],
}


def preload(case: Case) -> None:
    import importlib
    import os

    if case.impl == "sparsify" and case.device == "cpu":
        # sparsify picks its Triton decoder at import whenever triton imports; Triton has no CPU backend.
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    for name in PRELOAD.get(case.impl, []):
        importlib.import_module(name)


def build(case: Case):
    return builders()[case.impl](case)
