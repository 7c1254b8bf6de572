"""Evaluation: per-prefix fidelity, sparsity, spliced-in LM loss, side-by-side comparison, activation samples.

    from matryoshka_ext.eval import evaluate, EvalConfig, write_eval, write_compare
    from matryoshka_ext.eval import collect_samples, SampleSet, SamplesHook, write_browser, write_markdown_report

Modules: ``metrics`` (streaming accumulators and the metric definitions), ``splice`` (spliced next-token loss),
``evaluate`` (one token stream, every transcoder scored on each batch), ``report`` (JSON / markdown / plots),
``samples`` (top-N contexts per latent, the training hook), ``interp`` (decoder redundancy, co-activation),
``browser`` (markdown samples report, static HTML feature browser), ``commands`` (CLI entry points),
``absorption`` (first-letter feature absorption per prefix, encoder side), ``hierarchy`` (parents across groups),
``pages`` (one scan: histograms, quantile contexts, direct logit attribution), ``interp_command`` (``interp``).
Attributes load lazily: importing this package imports nothing beyond torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "EvalConfig": "evaluate",
    "evaluate": "evaluate",
    "FidelityStats": "metrics",
    "SparsityStats": "metrics",
    "SpliceStats": "splice",
    "write_eval": "report",
    "write_compare": "report",
    "SampleSet": "samples",
    "SamplesHook": "samples",
    "TopActivationCollector": "samples",
    "collect_samples": "samples",
    "decoder_redundancy": "interp",
    "CoactivationStats": "interp",
    "write_browser": "browser",
    "write_markdown_report": "browser",
    "eval_command": "commands",
    "compare_command": "commands",
    "samples_command": "commands",
    "add_eval_arguments": "commands",
    "add_compare_arguments": "commands",
    "add_samples_arguments": "commands",
    "absorption_from_activations": "absorption",
    "measure_absorption": "absorption",
    "build_hierarchy": "hierarchy",
    "interp_command": "interp_command",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
