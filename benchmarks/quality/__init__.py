"""Quality benchmark (issue 13): every implementation trained by its own code on one activation cache, scored
by one harness (ours, ``matryoshka_ext.eval``) on the same held-out tokens.

    python -m benchmarks.quality.run --reduced          # train + evaluate -> results/*.json
    python -m benchmarks.quality.report                 # results/*.json -> benchmarks/QUALITY.md + PNGs

Modules: ``spec`` (rows, grid), ``caches`` (where the activation caches are, SAE-mode streams), ``exchange``
(the weight format peers export to, read back as a ``BaseTranscoder``), ``train_ours`` (our Trainer),
``train_peer`` (run inside .venv-bench: SAELens, dictionary_learning, sparsify), ``harness`` (evaluation),
``run`` (orchestration), ``report``.
"""
