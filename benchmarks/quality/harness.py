"""One evaluation for every row: ``matryoshka_ext.eval.evaluate`` on the held-out cache (+ the LM for splicing).

Two passes, so that a row's fidelity is known as soon as it is trained while the LM work is shared:
- ``fidelity`` (one model, right after its training): per prefix FVU and L0 (mean); dead and dense fractions over
  every held-out token (>= 100k in the benchmark cache). No LM.
- ``splice`` (a batch of transcoder models): the spliced next-token loss (delta CE, CE recovered vs zero / mean
  ablation, KL(clean || spliced)) per prefix. One ``evaluate`` call for the batch, so the clean forward and the
  ablation baselines of each batch of contexts are computed once and shared by every model and prefix; the
  LM head (262k vocabulary) makes each spliced forward the dominant cost of scoring.
SAE rows are scored on (x, x) and not spliced (replacing the MLP input is a different intervention).
Each model is scored with its own inference rule: ours and the BatchTopK peers as JumpReLU with their learned
threshold(s), sparsify as per-row TopK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .caches import heldout_batches


def load_lm_and_contexts(layer: int) -> tuple[Any, Any, Any]:
    """(model, held-out token contexts, sites) as the package's default TrainConfig defines them; the LM in the
    config's ``model_dtype``, the dtype the activation caches were made in (so the spliced clean run matches)."""
    import torch

    from matryoshka_ext.config import TrainConfig
    from matryoshka_ext.data.models import load_model
    from matryoshka_ext.data.sites import sites_for
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts

    cfg = TrainConfig(layer=layer)
    model = load_model(cfg.model_name, dtype=getattr(torch, cfg.model_dtype))
    texts = text_dataset(cfg.dataset, split=cfg.eval_split or "eval", streaming=cfg.streaming,
                         text_field=cfg.text_field, subset=cfg.dataset_subset)  # fmt: skip
    contexts = token_contexts(texts, model, cfg.context_size, prepend_bos=cfg.prepend_bos)
    return model, contexts, sites_for(layer, cfg.input_hook, cfg.output_hook)


def fidelity(tc: Any, heldout: str, mode: str, heldout_tokens: int | None, layer: int = 12) -> dict[str, Any]:
    """FVU / L0 per prefix and dead / dense fractions of one model over the held-out cache (no LM needed)."""
    from matryoshka_ext.data.sites import sites_for
    from matryoshka_ext.eval.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(n_tokens=heldout_tokens or 10**12, splice_tokens=0, chunk_tokens=4096)
    counts: list[Any] = []
    encode = tc.encode

    def counting_encode(x: Any) -> Any:  # per-latent firing counts of the same pass (max density, > 50% dense)
        acts = encode(x)
        fired = acts.indices[acts.values > 0]
        import torch

        c = torch.bincount(fired.long(), minlength=acts.num_latents)
        counts.append(c if not counts else counts.pop() + c)
        return acts

    tc.encode = counting_encode
    try:
        res = evaluate([tc], None, sites_for(layer), None, cfg,
                       activations=heldout_batches(heldout, mode, heldout_tokens))  # fmt: skip
    finally:
        del tc.encode
    out = summarize(res["transcoders"][0])
    if counts:
        dens = counts[0].double() / max(out["n_tokens"], 1)
        out["max_density"] = float(dens.max())
        out["dense50"] = int((dens > 0.5).sum())
    return out


SPLICE_KEYS = ("ce", "delta_ce", "ce_recovered_zero", "ce_recovered_mean", "kl")


def splice(tcs: Sequence[Any], heldout: str, lm: tuple[Any, Any, Any], splice_tokens: int,
           prefixes: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:  # fmt: skip
    """Spliced next-token loss of every model in ``tcs`` (unique names) on the first held-out contexts, in ONE
    ``evaluate`` call: the clean forward and the zero / mean ablation baselines of each batch are computed once
    for all of them. ``prefixes``: "all" or "last". Returns ({name: [{prefix, ce, delta_ce, ...}]}, clean)."""
    from matryoshka_ext.eval.evaluate import EvalConfig, evaluate

    model, contexts, sites = lm
    # the fidelity part of this call is not used: score the fewest rows it allows
    cfg = EvalConfig(n_tokens=256, splice_tokens=splice_tokens, splice_prefixes=prefixes, chunk_tokens=4096)
    res = evaluate(list(tcs), model, sites, contexts, cfg, activations=heldout_batches(heldout, "transcoder", 256))
    out = {
        e["name"]: [{"prefix": p["prefix"], **{k: p.get(k) for k in SPLICE_KEYS}} for p in e["prefixes"]]
        for e in res["transcoders"]
    }
    return out, res["clean"]


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """The per-model numbers the report needs from one ``evaluate`` transcoder entry."""
    sp = entry["sparsity"]
    return {
        "n_tokens": entry["n_tokens"],
        "prefixes": [
            {k: p.get(k) for k in ("prefix", "latents", "fvu", "l0_mean", "delta_ce", "ce_recovered_zero",
                                   "ce_recovered_mean", "kl")}  # fmt: skip
            for p in entry["prefixes"]
        ],
        "dead_fraction": sp["dead_fraction"],
        "dense_fraction": sp["dense_fraction"],
        "dense_threshold": sp["dense_threshold"],
        "groups": sp["groups"],
    }
