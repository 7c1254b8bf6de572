"""Top-N activation samples: the vectorized streaming merge against a brute-force dense computation."""

import os

import pytest
import torch

from matryoshka_ext.eval.samples import (
    SampleSet,
    SamplesHook,
    TopActivationCollector,
    cat_acts,
    collect_from_activations,
)
from matryoshka_ext.sparse import SparseActs

BOS = 2


def _random_stream(gen: torch.Generator, n_batches: int, B: int, T: int, F: int, vocab: int = 50):
    """Batches of (tokens [B, T], keep [B, T], dense acts [R, F]) with random sparse positive activations."""
    out = []
    for _ in range(n_batches):
        tokens = torch.randint(3, vocab, (B, T), generator=gen)
        tokens[:, 0] = BOS
        tokens[torch.rand(B, T, generator=gen) < 0.05] = BOS  # document starts inside contexts
        keep = tokens != BOS
        R = int(keep.sum())
        mask = torch.rand(R, F, generator=gen) < 0.15
        dense = torch.rand(R, F, generator=gen) * mask
        out.append((tokens, keep, dense))
    return out


def _brute_force(stream, F: int, N: int, window: tuple[int, int]):
    """Per latent: sorted (value, context, pos, window tokens, window acts) of its top N over all batches."""
    left, right = window
    records = {f: [] for f in range(F)}
    ctx0 = 0
    for tokens, keep, dense in stream:
        B, T = tokens.shape
        full = torch.zeros(B, T, F)
        full[keep] = dense
        for b in range(B):
            for t in range(T):
                for f in torch.nonzero(full[b, t] > 0).flatten().tolist():
                    wt, wa = [], []
                    for o in range(-left, right + 1):
                        if 0 <= t + o < T:
                            wt.append(int(tokens[b, t + o]))
                            wa.append(float(full[b, t + o, f]))
                        else:
                            wt.append(-1)
                            wa.append(0.0)
                    records[f].append((float(full[b, t, f]), ctx0 + b, t, wt, wa))
        ctx0 += B
    return {f: sorted(r, key=lambda z: -z[0])[:N] for f, r in records.items()}


def test_top_n_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    F, N, window = 12, 5, (3, 2)
    stream = _random_stream(gen, n_batches=4, B=3, T=10, F=F)
    col = TopActivationCollector(F, top_n=N, window=window)
    ctx0 = 0
    for tokens, keep, dense in stream:
        # two encoder chunks joined by cat_acts, as collect_from_activations does
        half = dense.shape[0] // 2
        acts = cat_acts([SparseActs.from_dense(dense[:half]), SparseActs.from_dense(dense[half:])])
        col.update(acts, tokens, keep.reshape(-1).nonzero().squeeze(1), torch.arange(ctx0, ctx0 + len(tokens)))
        ctx0 += len(tokens)
    res = col.result()
    expect = _brute_force(stream, F, N, window)
    total = sum(int(k.sum()) for _, k, _ in stream)
    assert res.n_tokens == total
    for f in range(F):
        exp = expect[f]
        got_v = res.top_values[f]
        assert torch.allclose(got_v[: len(exp)], torch.tensor([e[0] for e in exp]))
        assert torch.isinf(got_v[len(exp) :]).all()
        for j, (_v, c, t, wt, wa) in enumerate(exp):
            assert int(res.top_context[f, j]) == c and int(res.top_pos[f, j]) == t
            assert res.window_tokens[f, j].tolist() == wt
            assert torch.allclose(res.window_acts[f, j], torch.tensor(wa))
        dense_all = torch.cat([d[:, f] for _, _, d in stream])
        assert int(res.fire_count[f]) == int((dense_all > 0).sum())
        assert res.act_sum[f].item() == pytest.approx(float(dense_all.double().sum()), rel=1e-9)


def test_sample_set_save_load_roundtrip(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    F = 8
    ((tokens, keep, dense),) = _random_stream(gen, 1, 2, 12, F)
    col = TopActivationCollector(F, top_n=3, window=(2, 1))
    col.update(SparseActs.from_dense(dense), tokens, keep.reshape(-1).nonzero().squeeze(1), torch.arange(2))
    s = col.result([4, 8], {"name": "x", "vocab": {str(i): f"t{i}" for i in range(50)}})
    s.stats["decoder_max_cos"] = torch.rand(F, generator=gen)
    s.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["samples.json", "samples.safetensors"]
    r = SampleSet.load(tmp_path)
    for k in ("top_values", "top_context", "top_pos", "window_tokens", "window_acts", "fire_count", "act_sum"):
        assert torch.equal(getattr(r, k), getattr(s, k)), k
    assert torch.equal(r.stats["decoder_max_cos"], s.stats["decoder_max_cos"])
    assert r.prefix_ends == [4, 8] and r.window == (2, 1) and r.n_tokens == s.n_tokens
    f = int(torch.argmax(r.fire_count))
    ctxs = r.contexts(f)
    assert ctxs and ctxs[0]["value"] == pytest.approx(float(r.top_values[f, 0]))
    c = ctxs[0]
    assert c["tokens"][c["center"]] == f"t{int(tokens[c['context'], c['pos']])}"
    assert c["acts"][c["center"]] == pytest.approx(c["value"])


def test_samples_hook_leaves_training_state_untouched(seed):
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    gen = torch.Generator().manual_seed(seed)
    cfg = TranscoderConfig(d_in=16, d_out=16, dict_size=64, group_sizes=[16, 48], k=4)
    model = MatryoshkaTranscoder(cfg)
    model.train()
    x_train = torch.randn(32, 16, generator=gen)
    model(x_train, torch.randn(32, 16, generator=gen)).loss.backward()  # grads + stats as in training
    tokens = torch.randint(3, 40, (4, 8), generator=gen)
    tokens[:, 0] = BOS
    keep = tokens != BOS
    x = torch.randn(int(keep.sum()), 16, generator=gen)
    hook = SamplesHook(x, tokens, keep, every=5, top_n=3, window=(2, 1), mode="batch")
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    rng = torch.get_rng_state()
    assert hook(3, model) is None
    res = hook(5, model)
    assert res is not None and res.n_tokens == x.shape[0] and int(res.fire_count.sum()) > 0
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_sd[k]), k
    for n, p in model.named_parameters():
        if n in before_grad:
            assert torch.equal(p.grad, before_grad[n]), n
    # the same samples as a direct collection
    from matryoshka_ext.loaders import MatryoshkaAdapter

    direct = collect_from_activations(
        MatryoshkaAdapter(model.eval(), mode="batch"), x, tokens, keep, top_n=3, window=(2, 1)
    ).result()
    assert torch.equal(direct.top_values, res.top_values)
