"""Fixtures: a tiny Gemma-2-shaped model and small Matryoshka transcoders trained on its MLP sites.

The transcoders are trained for real (a few dozen steps on the tiny model's activations, activation scaling on),
so their JumpReLU threshold, folded scales and sparsity are those of a trained checkpoint, at a size where every
peer round trip takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

BOS = 2
D_MODEL = 64
GROUPS = [32, 32, 64, 128]


def tiny_tokens(n: int = 8, t: int = 32, seed: int = 0, d_vocab: int = 512) -> torch.Tensor:
    """[n, t] token ids in [3, d_vocab) with BOS (id 2) first, as our pipeline feeds Gemma."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, d_vocab, (n, t), generator=g)
    tokens[:, 0] = BOS
    return tokens


def site_activations(model, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [S, d], y [S, d]) at the Gemma Scope sites of ``layer``, BOS positions dropped."""
    from matryoshka_ext.data import gemma_sites

    s = gemma_sites(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(s.hooks))
    keep = tokens != BOS
    return cache[s.input_hook][keep], cache[s.output_hook][keep]


def train_transcoder(model, layer: int, steps: int = 40, seed: int = 0, skip_connection: bool = False):
    """A MatryoshkaTranscoder (F=256, groups 32/32/64/128, k=8; optionally a skip transcoder) trained on ``layer``."""
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    torch.manual_seed(seed)
    x, y = site_activations(model, layer, tiny_tokens(32, 64, seed=seed + 1))
    cfg = TranscoderConfig(d_in=D_MODEL, d_out=D_MODEL, dict_size=sum(GROUPS), group_sizes=GROUPS, k=8,
                           aux_k=0, dead_tokens=10**9, threshold_momentum=0.9,
                           skip_connection=skip_connection)  # fmt: skip
    tc = MatryoshkaTranscoder(cfg)
    tc.initialize_from_batch(x, y)
    opt = torch.optim.Adam(tc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        out = tc(x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        tc.project_decoder_grad()
        opt.step()
        tc.normalize_decoder()
    return tc.eval()


@pytest.fixture(scope="session")
def tiny():
    """2-layer random Gemma-2 architecture (d_model 64, vocab 512), BOS id 2."""
    from matryoshka_ext.data import tiny_model

    return tiny_model("gemma2", n_layers=2, seed=0)


@pytest.fixture(scope="session")
def transcoders(tiny) -> dict[int, object]:
    """{layer: trained MatryoshkaTranscoder} for both layers of ``tiny``."""
    return {layer: train_transcoder(tiny, layer, seed=layer) for layer in (0, 1)}


@pytest.fixture(scope="session")
def saved(transcoders, tmp_path_factory) -> dict[int, Path]:
    """{layer: save_pretrained folder} of ``transcoders`` (what `matryoshka-ext train` leaves in a run)."""
    root = tmp_path_factory.mktemp("ours")
    return {layer: Path(tc.save_pretrained(root / f"L{layer}")) for layer, tc in transcoders.items()}


@pytest.fixture(scope="session")
def probe_x(tiny) -> torch.Tensor:
    """[S, 64] held-out input-site activations of layer 1 (other tokens than the training ones)."""
    return site_activations(tiny, 1, tiny_tokens(8, 32, seed=99))[0]
