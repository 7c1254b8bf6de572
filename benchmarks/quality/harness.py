"""One evaluation for every row: ``matryoshka_ext.eval.evaluate`` on the held-out cache (+ the LM for splicing).

Per prefix: FVU, L0 (mean), and for transcoder rows the spliced next-token loss (delta CE, CE recovered vs
zero/mean ablation, KL(clean || spliced)); per model: dead and dense fractions over every held-out token
(>= 100k in the benchmark cache). All transcoder rows of one layer are scored in ONE ``evaluate`` call, so the
clean forward and ablation baselines of each splice batch are computed once and shared by every row and prefix.
SAE rows are scored on (x, x) and not spliced (replacing the MLP input is a different intervention).
Each model is scored with its own inference rule: ours and the BatchTopK peers as JumpReLU with their learned
threshold(s), sparsify as per-row TopK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .caches import heldout_batches


def load_lm_and_contexts(layer: int) -> tuple[Any, Any, Any]:
    """(model, held-out token contexts, sites) as the package's default TrainConfig defines them."""
    from matryoshka_ext.config import TrainConfig
    from matryoshka_ext.data.models import load_model
    from matryoshka_ext.data.sites import sites_for
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts

    cfg = TrainConfig(layer=layer)
    model = load_model(cfg.model_name)
    texts = text_dataset(cfg.dataset, split=cfg.eval_split or "eval", streaming=cfg.streaming,
                         text_field=cfg.text_field, subset=cfg.dataset_subset)  # fmt: skip
    contexts = token_contexts(texts, model, cfg.context_size, prepend_bos=cfg.prepend_bos)
    return model, contexts, sites_for(layer, cfg.input_hook, cfg.output_hook)


def score(
    tcs: Sequence[Any],
    heldout: str,
    mode: str,
    heldout_tokens: int | None,
    splice_tokens: int = 0,
    lm: tuple[Any, Any, Any] | None = None,
    layer: int = 0,
) -> dict[str, Any]:
    """Evaluate ``tcs`` (BaseTranscoders with unique names) on the held-out cache; ``lm`` for splicing."""
    from matryoshka_ext.data.sites import sites_for
    from matryoshka_ext.eval.evaluate import EvalConfig, evaluate

    n = heldout_tokens or 10**12
    splice = splice_tokens if mode == "transcoder" and lm is not None else 0
    cfg = EvalConfig(n_tokens=n, splice_tokens=splice, splice_prefixes="all", chunk_tokens=4096)
    model, contexts, sites = lm if lm is not None else (None, None, sites_for(layer))
    return evaluate(list(tcs), model, sites, contexts, cfg, activations=heldout_batches(heldout, mode, heldout_tokens))


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
