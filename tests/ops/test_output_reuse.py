"""CPU kernels hand a gradient-sized output buffer out again only once nothing holds the previous one."""

import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops as raw

from .problems import randint


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    N, F, d, k = randint(5, 30), randint(40, 90), randint(1, 200), randint(1, 8)
    acts = mx.topk(torch.randn(N, F, generator=g), k)
    S = torch.randn(1, N, d, generator=g)
    return acts, S, F


def test_held_outputs_are_never_overwritten(seed):
    acts, S, F = _inputs(seed)
    held = [raw.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, torch.float32)[0] for _ in range(6)]
    copies = [h.clone() for h in held]
    # more calls with other inputs while all six are alive: none of them may change
    for _ in range(3):
        raw.latent_grad(S * 3 + 1, acts.values, acts.indices, acts.row_offsets, [F], F, torch.float32)
    for h, c in zip(held, copies):
        assert torch.equal(h, c)
    assert len({h.data_ptr() for h in held}) == len(held)


def test_a_released_output_is_reused_and_fully_rewritten(seed):
    acts, S, F = _inputs(seed)
    first = raw.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, torch.float32)[0]
    ptr, expected = first.data_ptr(), first.clone()
    first.fill_(float("nan"))  # garbage left in the buffer must not leak into the next result
    del first
    second = raw.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, torch.float32)[0]
    assert second.data_ptr() == ptr
    assert torch.equal(second, expected)


def test_views_keep_the_buffer_held(seed):
    acts, S, F = _inputs(seed)
    w = torch.ones(1)
    y = torch.randn(S.shape[1], S.shape[2])
    W, b = torch.randn(F, S.shape[2]), torch.randn(S.shape[2])
    S1, _ = raw.nested_mse_backward_dot(w, acts.values, acts.indices, acts.row_offsets, W, b, y, [F])
    row = S1[0]  # a view: the buffer is still in use through it
    kept = row.clone()
    del S1
    raw.nested_mse_backward_dot(w * 5, acts.values, acts.indices, acts.row_offsets, W, b, y * 2, [F])
    assert torch.equal(row, kept)
