"""Paired standard errors of the spliced loss (``SpliceStats.paired``, eval.json / eval.md fields).

* the SEs equal a direct computation: per-prediction CE differences of two variants on the same rows, the
  i.i.d. SE sd(d)/sqrt(n) and the cluster-by-context sandwich SE written out with plain Python loops;
* on a tiny model, evaluate()'s delta_ce_se / delta_ce_step / delta_ce_step_se agree with per-row CEs recomputed
  independently (full forwards with the splice hooks, log-softmax in float64), contexts numbered across batches;
* eval.md shows 'ΔCE ± SE' and the step column.
"""

import math

import pytest
import torch
from test_eval_splice import _sparse_tc  # the same random sparse transcoder (tests/eval is on sys.path)

from matryoshka_ext.data.models import tiny_model
from matryoshka_ext.data.sites import gemma_sites
from matryoshka_ext.eval.evaluate import EvalConfig, evaluate
from matryoshka_ext.eval.splice import SpliceStats, _hooks, scored_positions

BOS, LAYER = 2, 1


def _direct(d: list[float], ctx: list[int]) -> tuple[float, float, float]:
    """(mean, i.i.d. SE, clustered SE) with loops: the textbook formulas, independent of the implementation."""
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    sums: dict[int, float] = {}
    for v, c in zip(d, ctx):
        sums[c] = sums.get(c, 0.0) + (v - mean)
    g = len(sums)
    clustered = math.sqrt(g / (g - 1) * sum(s * s for s in sums.values())) / n
    return mean, sd / math.sqrt(n), clustered


def test_paired_se_matches_direct_computation(seed):
    g = torch.Generator().manual_seed(seed)
    stats = SpliceStats()
    all_a, all_b, all_ctx = [], [], []
    n_ctx = 0
    for batch in range(4):  # uneven batches; a context effect shared by its rows makes the two SEs differ
        B = 3 if batch != 2 else 2
        ctx = torch.randint(0, B, (int(torch.randint(5, 40, (1,), generator=g)),), generator=g).sort().values
        shift = torch.randn(B, generator=g, dtype=torch.float64)[ctx]
        clean = torch.rand(ctx.numel(), generator=g, dtype=torch.float64) * 3
        a = clean + 0.1 + shift + 0.05 * torch.randn(ctx.numel(), generator=g, dtype=torch.float64)
        b = clean + 0.2 + 0.3 * torch.randn(ctx.numel(), generator=g, dtype=torch.float64)
        stats.add("clean", clean.float(), None, ctx, B)
        stats.add("a", a, torch.zeros_like(a))
        stats.add("b", b, torch.zeros_like(b))
        all_a += a.tolist()
        all_b += b.tolist()
        all_ctx += (ctx + n_ctx).tolist()
        n_ctx += B
    clean_rows = stats.per_row("clean").tolist()
    for x, y, ref in (("a", "clean", all_a), ("a", "b", all_a)):
        other = clean_rows if y == "clean" else all_b
        d = [u - v for u, v in zip(ref, other)]
        mean, se_iid, se = _direct(d, all_ctx)
        got = stats.paired(x, y)
        assert got["n"] == len(d) and got["contexts"] == len(set(all_ctx))
        assert got["diff"] == pytest.approx(mean, rel=1e-12)
        assert got["se_iid"] == pytest.approx(se_iid, rel=1e-10)
        assert got["se"] == pytest.approx(se, rel=1e-10)
    # the shared context shift makes the clustered SE of a - b larger than the i.i.d. one
    assert stats.paired("a", "b")["se"] > 1.5 * stats.paired("a", "b")["se_iid"]
    # the mean of the paired differences is the difference of the means (what the ΔCE column shows)
    assert stats.paired("a", "clean")["diff"] == pytest.approx(stats.mean_ce("a") - stats.mean_ce("clean"))
    # no contexts given: every row its own cluster, and the clustered SE (with its G/(G-1)) is the i.i.d. one
    flat = SpliceStats()
    flat.add("clean", torch.zeros(50, dtype=torch.float64), None)
    flat.add("v", torch.randn(50, generator=g, dtype=torch.float64), torch.zeros(50))
    p = flat.paired("v", "clean")
    assert p["contexts"] == 50 and p["se"] == pytest.approx(p["se_iid"], rel=1e-10)


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2)


def test_evaluate_reports_paired_se_of_delta_ce_and_steps(model, seed, tmp_path):
    from matryoshka_ext.eval.report import write_eval

    sites = gemma_sites(LAYER)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 512, (7, 20), generator=g)
    tokens[:, 0] = BOS
    tokens[2, 11] = BOS
    tc = _sparse_tc(seed, model.cfg.d_model)
    cfg = EvalConfig(n_tokens=50, splice_tokens=10_000, splice_batch_contexts=3)  # batches of 3, 3, 1 contexts
    res = evaluate([tc], model, sites, tokens, cfg, exclude_token_ids=[BOS])
    # independent per-row CEs: full forwards (no restart at block L), float64 log-softmax
    keep = tokens != BOS
    scored = scored_positions(keep)
    ctx = scored.nonzero()[:, 0].tolist()  # context of each scored prediction, in row-major order

    def rows(replace=None):
        with torch.no_grad():
            hooks = _hooks(sites, keep, replace) if replace is not None else []
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        lp = torch.log_softmax(logits.double(), -1)
        return (-lp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0])[scored].tolist()

    clean = rows()
    per_prefix = [rows(lambda x, p=p: tc.reconstruct(x.float(), prefix=p)) for p in (1, 2, 3)]
    assert res["clean"]["n_scored"] == len(clean) and res["clean"]["n_contexts"] == 7
    ps = res["transcoders"][0]["prefixes"]
    for i, p in enumerate(ps):
        mean, se_iid, se = _direct([a - b for a, b in zip(per_prefix[i], clean)], ctx)
        assert p["delta_ce"] == pytest.approx(mean, rel=1e-4, abs=1e-6)  # float32 model: ~1e-7 per row
        assert p["delta_ce_se"] == pytest.approx(se, rel=1e-3)
        assert p["delta_ce_se_iid"] == pytest.approx(se_iid, rel=1e-3)
        if i == 0:
            assert p["delta_ce_step"] is None and p["delta_ce_step_se"] is None
            continue
        mean, se_iid, se = _direct([a - b for a, b in zip(per_prefix[i], per_prefix[i - 1])], ctx)
        assert p["delta_ce_step_from"] == i
        assert p["delta_ce_step"] == pytest.approx(mean, rel=1e-4, abs=1e-6)
        assert p["delta_ce_step"] == pytest.approx(p["delta_ce"] - ps[i - 1]["delta_ce"], abs=1e-12)
        assert p["delta_ce_step_se"] == pytest.approx(se, rel=1e-3)
        assert p["delta_ce_step_se_iid"] == pytest.approx(se_iid, rel=1e-3)
    write_eval(res, str(tmp_path))
    md = (tmp_path / "eval.md").read_text()
    assert "ΔCE ± SE" in md and "step ± SE" in md and "7 contexts" in md
    assert f"{ps[1]['delta_ce']:.4f} ± {ps[1]['delta_ce_se']:.4f}" in md
    assert f"{ps[2]['delta_ce_step']:+.4f} ± {ps[2]['delta_ce_step_se']:.4f}" in md
    # an interp section added to the report survives a rewrite by eval
    from matryoshka_ext.eval.interp_command import EVAL_BEGIN, EVAL_END, attach_to_eval_report

    attach_to_eval_report(str(tmp_path / "eval.md"), f"{EVAL_BEGIN}\n## Interpretability\n{EVAL_END}\n")
    write_eval(res, str(tmp_path))
    again = (tmp_path / "eval.md").read_text()
    assert again.startswith(md.rstrip("\n")) and again.count("## Interpretability") == 1
    # only the last prefix spliced: no step, SE of its ΔCE still there
    last = evaluate(
        [tc],
        model,
        sites,
        tokens,
        EvalConfig(n_tokens=50, splice_tokens=40, splice_prefixes="last"),
        exclude_token_ids=[BOS],
    )["transcoders"][0]["prefixes"]
    assert last[0]["delta_ce_se"] is None and last[2]["delta_ce_step"] is None
    assert last[2]["delta_ce_se"] is not None and last[2]["delta_ce_se"] > 0
