"""Spliced LM loss and the evaluation loop on tiny_model() (a random Gemma-2-shaped TransformerLens model).

* a "transcoder" that recomputes the true MLP from the input site must give delta CE == 0 and KL == 0;
* a zero transcoder must equal zero ablation;
* BOS positions are neither replaced nor scored; CE matches an independent computation;
* compare scores every transcoder on the same tokens: a model's numbers do not depend on its company.
"""

import pytest
import torch

from matryoshka_ext.data.models import tiny_model
from matryoshka_ext.data.sites import gemma_sites
from matryoshka_ext.eval.evaluate import EvalConfig, evaluate
from matryoshka_ext.eval.splice import SpliceStats, _hooks, scored_positions, splice_batch
from matryoshka_ext.loaders.base import BaseTranscoder, SparseTranscoder
from matryoshka_ext.sparse import SparseActs

BOS, LAYER = 2, 1


class TrueMLP(BaseTranscoder):
    """Predicts hook_mlp_out exactly: the block's own MLP applied to ln2.hook_normalized (times the ln2 gain)."""

    def __init__(self, block, d: int) -> None:
        super().__init__()
        self.block = block
        self.d_in = self.d_out = d
        self.num_latents, self.prefix_ends, self.name, self.meta = 1, None, "true-mlp", {}

    def encode(self, x):
        empty = torch.zeros(0, dtype=torch.long)
        return SparseActs(x.new_zeros(0), empty, torch.zeros(x.shape[0] + 1, dtype=torch.long), 1)

    def decode_prefixes(self, acts):
        raise NotImplementedError

    def reconstruct(self, x, prefix=None):
        return self.block.ln2_post(self.block.mlp(x * self.block.ln2.w))

    def reconstruct_prefixes(self, x):
        return self.reconstruct(x).unsqueeze(0), self.encode(x)


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2)


def _tokens(seed: int, n: int = 8, T: int = 24):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, 512, (n, T), generator=g)
    t[:, 0] = BOS
    t[1, 9] = BOS  # a document boundary inside a context
    t[-1, 17] = BOS
    return t


def _sparse_tc(seed: int, d: int = 64, F: int = 96, name: str = "rand", ends=(32, 64, 96)):
    g = torch.Generator().manual_seed(seed)
    return SparseTranscoder(
        torch.randn(d, F, generator=g) / 6,
        torch.zeros(F),
        torch.randn(F, d, generator=g) / 8,
        torch.zeros(d),
        activation="topk",
        k=8,
        prefix_ends=list(ends),
        name=name,
    )


def test_true_mlp_splice_is_exact_and_zero_transcoder_is_zero_ablation(model, seed):
    d = model.cfg.d_model
    zero = SparseTranscoder(torch.randn(d, 16), torch.zeros(16), torch.zeros(16, d), torch.zeros(d), "relu")
    zero.name = "zero"
    res = evaluate(
        [TrueMLP(model.blocks[LAYER], d), zero],
        model,
        gemma_sites(LAYER),
        _tokens(seed),
        EvalConfig(n_tokens=10_000, splice_tokens=10_000, batch_contexts=4, splice_batch_contexts=3),
        exclude_token_ids=[BOS],
    )
    c = res["clean"]
    assert c["n_scored"] == int(scored_positions(_tokens(seed) != BOS).sum())
    true_p = res["transcoders"][0]["prefixes"][0]
    assert abs(true_p["delta_ce"]) < 1e-9 and abs(true_p["kl"]) < 1e-9
    assert true_p["fvu"] < 1e-10 and true_p["ce_recovered_zero"] == pytest.approx(1.0)
    z = res["transcoders"][1]["prefixes"][0]
    assert z["ce"] == pytest.approx(c["ce_zero_ablation"], abs=1e-9)
    assert z["kl"] == pytest.approx(c["kl_zero_ablation"], abs=1e-9)
    assert z["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6) and c["kl_zero_ablation"] > 0


def test_clean_ce_and_bos_handling(model, seed):
    sites = gemma_sites(LAYER)
    tokens = _tokens(seed, n=3)
    keep = tokens != BOS
    stats = SpliceStats()
    tc = _sparse_tc(seed)
    variants = [(("rand", 3), lambda x: tc.reconstruct(x, 3))]
    splice_batch(model, sites, tokens, keep, variants, stats)
    # restarting the intervened forwards at block L (the default) gives the same numbers as full forwards
    full = SpliceStats()
    splice_batch(model, sites, tokens, keep, variants, full, from_layer=False)
    for key in stats.n:
        assert stats.mean_ce(key) == pytest.approx(full.mean_ce(key), rel=1e-6, abs=1e-9), key
        assert stats.mean_kl(key) == pytest.approx(full.mean_kl(key), rel=1e-5, abs=1e-9), key
    # independent clean CE: log-softmax over the plain forward, predictions t -> t+1 with both tokens non-BOS
    with torch.no_grad():
        lp = torch.log_softmax(model(tokens).double(), -1)
    nll = -lp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    mask = keep[:, :-1] & keep[:, 1:]
    assert stats.mean_ce("clean") == pytest.approx(float(nll[mask].mean()), rel=1e-5)
    assert stats.n["clean"] == int(mask.sum()) == stats.n[("rand", 3)]
    # the hook replaces y at kept positions only; BOS keeps its clean value
    grabbed = {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        hooks = _hooks(sites, keep, lambda x: torch.full((x.shape[0], x.shape[1]), 7.0))
        grab = (sites.output_hook, lambda a, hook: grabbed.setdefault("y", a))
        model.run_with_hooks(tokens, fwd_hooks=hooks + [grab])
    y_clean = cache[sites.output_hook]
    assert torch.equal(grabbed["y"][~keep], y_clean[~keep])
    assert bool((grabbed["y"][keep] == 7.0).all())


def test_fidelity_matches_direct_computation_and_compare_is_order_free(model, seed):
    sites = gemma_sites(LAYER)
    tokens = _tokens(seed, n=6)
    a, b = _sparse_tc(seed, name="a"), _sparse_tc(seed + 1, name="b", ends=(48, 96))
    cfg = EvalConfig(n_tokens=100, splice_tokens=40, batch_contexts=4, splice_batch_contexts=2)
    both = evaluate([a, b], model, sites, tokens, cfg, exclude_token_ids=[BOS])
    alone = evaluate([b], model, sites, tokens, cfg, exclude_token_ids=[BOS])
    rb, rb_alone = both["transcoders"][1], alone["transcoders"][0]
    assert rb["n_tokens"] == rb_alone["n_tokens"] == 100  # trimmed to exactly n_tokens
    for p, q in zip(rb["prefixes"], rb_alone["prefixes"]):
        for k in ("fvu", "mse", "cosine", "l0_mean", "ce", "kl"):
            assert p[k] == pytest.approx(q[k], rel=1e-9, abs=1e-12), k
    assert both["clean"] == pytest.approx(alone["clean"])
    # FVU / L0 of transcoder a against a direct computation on the same 100 tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    keep = tokens != BOS
    x, y = cache[sites.input_hook][keep][:100].double(), cache[sites.output_hook][keep][:100].double()
    pre = x @ a.W_enc.double() + a.b_enc.double()
    top = pre.topk(8, dim=1)
    acts = torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0))
    for i, e in enumerate(a.ends):
        r = acts[:, :e] @ a.W_dec[:e].double() + a.b_dec.double()
        fvu = ((r - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        got = both["transcoders"][0]["prefixes"][i]
        assert got["fvu"] == pytest.approx(float(fvu), rel=1e-4)
        assert got["l0_mean"] == pytest.approx(float((acts[:, :e] > 0).sum(1).double().mean()))
    # splice limits: whole sub-batches until at least splice_tokens predictions are scored
    assert 40 <= both["clean"]["n_scored"] < 40 + 2 * tokens.shape[1]
    assert rb["prefixes"][0]["ce"] is not None


def test_splice_prefix_selection_and_report(model, seed, tmp_path):
    from matryoshka_ext.eval.report import write_compare

    a = _sparse_tc(seed, name="a")
    res = evaluate(
        [a],
        model,
        gemma_sites(LAYER),
        _tokens(seed, n=4),
        EvalConfig(n_tokens=50, splice_tokens=20, splice_prefixes="last"),
        exclude_token_ids=[BOS],
    )
    ps = res["transcoders"][0]["prefixes"]
    assert [p["ce"] is not None for p in ps] == [False, False, True]
    paths = write_compare(res, str(tmp_path))
    for name in (
        "eval.json",
        "eval.md",
        "compare.md",
        "fvu_vs_prefix.png",
        "l0_hist.png",
        "density_hist.png",
        "fvu_vs_l0.png",
        "delta_ce_vs_l0.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert paths["json"].endswith("eval.json")
    import json

    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["transcoders"][0]["prefixes"][0]["ce"] is None


def test_collect_samples_and_training_hook_on_tiny_model(model, seed):
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.eval.samples import SamplesHook, collect_from_activations, collect_samples
    from matryoshka_ext.loaders import MatryoshkaAdapter
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    sites = gemma_sites(LAYER)
    tokens = _tokens(seed, n=6)
    tc = _sparse_tc(seed)
    s = collect_samples(
        tc,
        model,
        sites,
        tokens,
        n_tokens=10_000,
        top_n=4,
        window=(3, 1),
        batch_contexts=4,
        exclude_token_ids=[BOS],
        chunk_tokens=17,
    )
    keep = tokens != BOS
    assert s.n_tokens == int(keep.sum()) and s.prefix_ends == [32, 64, 96]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    direct = collect_from_activations(tc, cache[sites.input_hook][keep], tokens, keep, top_n=4, window=(3, 1))
    torch.testing.assert_close(s.top_values, direct.values)
    assert torch.equal(s.window_tokens, direct.wtok) and torch.equal(s.fire_count, direct.fire_count)
    some_id = int(s.window_tokens[s.window_tokens >= 0][0])
    assert s.meta["vocab"][str(some_id)] == f"<{some_id}>"  # no tokenizer: ids stand in for strings

    cfg = TranscoderConfig(d_in=64, d_out=64, dict_size=96, group_sizes=[32, 64], k=8)
    mt = MatryoshkaTranscoder(cfg).train()
    hook = SamplesHook.from_model(
        model, sites, tokens, n_contexts=4, every=2, exclude_token_ids=[BOS], top_n=3, window=(2, 1), mode="row"
    )
    rng = torch.get_rng_state()
    res = hook(4, mt)
    assert mt.training and torch.equal(torch.get_rng_state(), rng)
    assert res.n_tokens == int(keep[:4].sum()) and res.meta["step"] == 4
    ref = collect_from_activations(
        MatryoshkaAdapter(mt, mode="row"),
        cache[sites.input_hook][:4][keep[:4]],
        tokens[:4],
        keep[:4],
        top_n=3,
        window=(2, 1),
    )
    torch.testing.assert_close(res.top_values, ref.values)


@pytest.mark.parametrize("seed", [0, 1])
def test_fidelity_from_an_activation_cache_equals_the_lm_path(model, seed, tmp_path):
    """The run's held-out activation cache (written by the training pipeline's writer from the same contexts)
    gives the same FVU, L0 and density as running the LM, and the spliced loss is the same too."""
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.training.sources import CachedActivations, write_activation_cache

    sites, toks = gemma_sites(LAYER), _tokens(seed, n=12)
    n_tokens = int((toks != BOS).sum()) - 5  # not a multiple of anything: the last batch is trimmed
    src = ActivationSource(model, sites, list(toks), batch_contexts=3, exclude_token_ids=[BOS])
    path = write_activation_cache(
        ((b.x, b.y) for b in src), n_tokens, str(tmp_path / "cache"), dtype=torch.float32, progress=False
    )
    tc = _sparse_tc(seed)
    cfg = EvalConfig(n_tokens=n_tokens, splice_tokens=40, batch_contexts=4, splice_batch_contexts=2, chunk_tokens=37)
    lm = evaluate(tc, model, sites, toks, cfg, exclude_token_ids=[BOS])
    held = CachedActivations(path, batch_size=1, mode="mmap")
    cached = evaluate(tc, model, sites, toks, cfg, exclude_token_ids=[BOS], activations=held.ordered_batches(50))
    assert lm["fidelity_source"] == "language model" and cached["fidelity_source"] == "activation cache"
    a, b = lm["transcoders"][0], cached["transcoders"][0]
    assert a["n_tokens"] == b["n_tokens"] == n_tokens
    for pa, pb in zip(a["prefixes"], b["prefixes"]):
        for key in ("fvu", "mse", "cosine", "l0_mean"):
            assert pb[key] == pytest.approx(pa[key], rel=1e-5, abs=1e-7), key
        for key in ("ce", "delta_ce", "kl"):  # same sub-batches, same forwards
            assert pb[key] == pytest.approx(pa[key], rel=1e-6, abs=1e-9), key
    assert b["sparsity"]["dead"] == a["sparsity"]["dead"]
    assert cached["clean"] == pytest.approx(lm["clean"])
    # without splicing the model is not needed at all
    cfg0 = EvalConfig(n_tokens=n_tokens, splice_tokens=0)
    alone = evaluate(tc, None, sites, None, cfg0, activations=held.ordered_batches(64))
    assert alone["transcoders"][0]["prefixes"][-1]["fvu"] == pytest.approx(a["prefixes"][-1]["fvu"], rel=1e-5)
    with pytest.raises(ValueError, match="model and contexts"):
        evaluate(tc, None, sites, None, cfg)
