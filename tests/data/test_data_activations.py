"""ActivationSource / ActivationBuffer / estimate_scales on a tiny random Gemma-2 model (CPU, seconds)."""

from collections import Counter

import pytest
import torch

from matryoshka_ext.data.activations import ActivationBuffer, ActivationSource, estimate_scales
from matryoshka_ext.data.sites import gemma_sites

pytest.importorskip("transformer_lens")

BOS, PAD, CTX = 2, 0, 32


@pytest.fixture(scope="module")
def model():
    from matryoshka_ext.data.models import tiny_model

    return tiny_model("gemma2", n_layers=2)


@pytest.fixture(scope="module")
def contexts() -> torch.Tensor:
    """[48, CTX] token contexts with BOS at position 0 and a few document-boundary BOS inside."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(3, 512, (48, CTX), generator=g)
    toks[:, 0] = BOS
    toks[::5, CTX // 2] = BOS
    return toks


def make_source(model, contexts, sites=None, batch_contexts=4):
    return ActivationSource(model, sites or gemma_sites(1), contexts, batch_contexts, exclude_token_ids=[BOS, PAD])


def test_source_matches_manual_run_with_cache(model, contexts) -> None:
    src = make_source(model, contexts)
    batch = src.next_batch()
    toks = contexts[:4]
    _, cache = model.run_with_cache(toks, names_filter=list(gemma_sites(1).hooks))
    keep = toks != BOS
    assert torch.equal(batch.x, cache["blocks.1.ln2.hook_normalized"][keep])
    assert torch.equal(batch.y, cache["blocks.1.hook_mlp_out"][keep])
    n = int(keep.sum())
    assert batch.x.shape == (n, 64) and batch.y.shape == (n, 64) and batch.x.dtype == torch.float32
    assert n == 4 * CTX - 4 - 1  # position-0 BOS of 4 contexts + one mid-context BOS (context 0) dropped
    assert not bool((batch.tokens == BOS).any())
    assert torch.equal(batch.tokens, toks[keep])
    assert torch.equal(batch.pos, torch.arange(CTX).expand(4, CTX)[keep])
    assert torch.equal(batch.context, torch.arange(4).unsqueeze(1).expand(4, CTX)[keep])
    assert src.position == 4 and src.next_batch().context.min() == 4
    assert src.dims() == {1: (64, 64)}


def test_multi_layer_from_one_pass(model, contexts) -> None:
    multi = make_source(model, contexts, [gemma_sites(1), gemma_sites(0)])
    assert multi.layers == [0, 1] and multi.stop_at_layer == 2
    b = multi.next_batch()
    for layer in (0, 1):
        single = make_source(model, contexts, gemma_sites(layer)).next_batch()
        assert torch.allclose(b.acts[layer][0], single.x) and torch.allclose(b.acts[layer][1], single.y)
    with pytest.raises(ValueError):
        b.x  # noqa: B018  (ambiguous for several layers)


def test_source_validation(model, contexts) -> None:
    with pytest.raises(ValueError, match="hooks not in the model"):
        make_source(model, contexts, gemma_sites(5))
    with pytest.raises(ValueError, match="tokenizer"):
        ActivationSource(model, gemma_sites(0), contexts)  # tiny model has no tokenizer
    with pytest.raises(ValueError):
        make_source(model, contexts, [gemma_sites(0), gemma_sites(0)])


def row_owner(model, contexts) -> tuple[dict[bytes, int], Counter]:
    """Map each activation row (bytes of x) to its context index, and count the rows.

    Identical rows exist (same token right after BOS in two contexts), hence the Counter.
    """
    owner, counts = {}, Counter()
    for batch in make_source(model, contexts, batch_contexts=8):
        for row, c in zip(batch.x, batch.context.tolist()):
            owner[row.numpy().tobytes()] = c
            counts[row.numpy().tobytes()] += 1
    return owner, counts


def test_buffer_mixes_and_serves_every_row_once(model, contexts) -> None:
    owner, counts = row_owner(model, contexts)
    buf = ActivationBuffer(make_source(model, contexts), buffer_tokens=512, batch_size=64, seed=1)
    batches = list(buf)
    assert all(x.shape == (64, 64) and y.shape == (64, 64) for x, y in batches)
    served = Counter(r.numpy().tobytes() for x, _ in batches for r in x)
    assert not served - counts  # nothing served more often than the source produced it
    assert counts.total() - served.total() < 64  # only the final partial batch is dropped
    first = {owner[r.numpy().tobytes()] for r in batches[0][0]}
    assert len(first) >= 10  # one batch mixes many contexts (512 rows from ~17 contexts)
    # After the first refill, batches mix rows from before and after it.
    initial = set(range(max(first) + 1))
    later = {owner[r.numpy().tobytes()] for r in batches[5][0]}
    assert later & initial and later - initial


def take(buf, n):
    return [tuple(t.clone() for t in next(buf)) for _ in range(n)]


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("stop_after", [1, 6])
def test_buffer_resume_is_bit_exact(model, contexts, background, stop_after) -> None:
    kw = dict(buffer_tokens=256, batch_size=32, seed=3)
    ref = ActivationBuffer(make_source(model, contexts), **kw)
    expected = take(ref, stop_after + 12)

    run = ActivationBuffer(make_source(model, contexts), background=background, **kw)
    head = take(run, stop_after)
    state = run.state_dict()
    run.close()
    resumed = ActivationBuffer(make_source(model, contexts), background=background, **kw)
    resumed.load_state_dict(state)
    got = head + take(resumed, 12)
    resumed.close()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))
    assert resumed.tokens_served == 32 * (stop_after + 12)


def test_buffer_resume_without_contents_is_deterministic(model, contexts) -> None:
    kw = dict(buffer_tokens=256, batch_size=32, seed=3)
    run = ActivationBuffer(make_source(model, contexts), **kw)
    take(run, 5)
    state = run.state_dict(include_buffer=False)
    assert state["buffer"] is None and state["position"] == run.position > 0
    outs = []
    for _ in range(2):
        b = ActivationBuffer(make_source(model, contexts), **kw)
        b.load_state_dict(state)
        outs.append(take(b, 3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*outs))


def test_buffer_multi_layer_shares_row_order(model, contexts) -> None:
    buf = ActivationBuffer(
        make_source(model, contexts, [gemma_sites(0), gemma_sites(1)]), buffer_tokens=256, batch_size=32
    )
    item = next(buf)
    assert set(item) == {0, 1}
    owner0 = {}
    for b in make_source(model, contexts, [gemma_sites(0), gemma_sites(1)]):
        for r0, r1 in zip(b.acts[0][0], b.acts[1][0]):
            owner0[r0.numpy().tobytes()] = r1
    for r0, r1 in zip(item[0][0], item[1][0]):
        assert torch.equal(owner0[r0.numpy().tobytes()], r1)


def test_estimate_scales(model, contexts) -> None:
    src = make_source(model, contexts)
    s_in, s_out = estimate_scales(src, n_tokens=300)
    assert src.position == 0  # rewound
    b = src.next_batch()
    x, y = b.x, b.y
    for batch in src:
        x, y = torch.cat([x, batch.x]), torch.cat([y, batch.y])
    x, y = x[:300], y[:300]
    assert (s_in * x).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-4)
    assert (s_out * y).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-4)
    multi = estimate_scales(make_source(model, contexts, [gemma_sites(0), gemma_sites(1)]), n_tokens=300)
    assert multi[1] == pytest.approx((s_in, s_out), rel=1e-5)
