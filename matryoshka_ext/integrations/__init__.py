"""Drop-ins for other SAE codebases: exports their real loaders read, and our kernels inside their training.

    from matryoshka_ext.integrations import export_saelens, export_circuit_tracer, export_dictionary_learning
    export_saelens("runs/my-run", "out/saelens")                 # cfg.json + sae_weights.safetensors
    export_circuit_tracer({6: "runs/my-run"}, "out/ct")          # config.yaml + layer_6.safetensors
    export_dictionary_learning("runs/my-run", "out/dl")          # ae.pt + config.json
    sae = SAEBenchTranscoder("runs/my-run")                      # SAEBench custom-SAE interface
    build_hub_folder({6: "runs/my-run"}, "hub/x"); push_to_hub("hub/x", "me/x")

Modules: ``saelens`` (export / import), ``circuit_tracer``, ``dictionary_learning``, ``saebench`` (adapter),
``saelens_training`` (SAELens' Matryoshka BatchTopK training SAE on ``mx.encode`` / ``mx.nested_mse``; imports
sae_lens), ``hub``, ``commands`` (``matryoshka-ext export``). Attributes load lazily: importing this package
imports nothing beyond torch, and no peer library is needed except by ``saelens_training``.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "JumpReLUWeights": "_common",
    "jumprelu_weights": "_common",
    "export_saelens": "saelens",
    "load_saelens_transcoder": "saelens",
    "saelens_to_matryoshka": "saelens",
    "export_circuit_tracer": "circuit_tracer",
    "export_dictionary_learning": "dictionary_learning",
    "load_dictionary_learning": "dictionary_learning",
    "SAEBenchTranscoder": "saebench",
    "MxMatryoshkaBatchTopKTrainingSAE": "saelens_training",
    "MxMatryoshkaBatchTopKTrainingSAEConfig": "saelens_training",
    "use_mx_kernels": "saelens_training",
    "register_with_saelens": "saelens_training",
    "HubUnavailableError": "hub",
    "build_hub_folder": "hub",
    "push_to_hub": "hub",
    "export_command": "commands",
    "add_export_arguments": "commands",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
