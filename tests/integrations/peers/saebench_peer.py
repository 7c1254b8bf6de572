"""Run inside .venv-saebench: SAEBench's sparse-probing evaluation (encode-only) on our transcoder, offline.

argv: TRANSCODER_DIR LAYER ARTIFACTS_DIR. The evaluation runs as SAEBench ships it
(``sae_bench.evals.sparse_probing.main.run_eval_single_sae``: tokenization with model.tokenizer, LLM activations
at ``sae.cfg.hook_name`` with BOS/pad masking, ``sae.encode`` on them, mean pooling, probes on all latents and on
the top-k latents) with two substitutions for the offline machine: the model is a tiny random Gemma-2 with a
word-level tokenizer, and the labelled texts come from a local generator instead of the hub (the only function
that downloads, ``dataset_utils.get_multi_label_train_test_data``, is replaced). Prints one JSON line.
"""

import json
import os
import random
import sys

# SAEBench 0.6.0 bug, independent of the SAE: train_probe_on_activations (@jaxtyped) binds train_dataset_size to
# the per-class count, then its own train_sklearn_probe (@beartype) gets both classes (2x) and the shared jaxtyping
# memo rejects it (BeartypeCallHintParamViolation, with beartype 0.18-0.23 / jaxtyping 0.2.38-0.3.11). Shape
# checks off, the evaluation runs unchanged.
os.environ["JAXTYPING_DISABLE"] = "1"

import torch  # noqa: E402

folder, layer, artifacts = sys.argv[1], int(sys.argv[2]), sys.argv[3]

import sae_bench.evals.sparse_probing.main as sp  # noqa: E402
import sae_bench.sae_bench_utils.dataset_utils as dataset_utils  # noqa: E402
from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig  # noqa: E402

from matryoshka_ext.data import tiny_model  # noqa: E402
from matryoshka_ext.integrations import SAEBenchTranscoder  # noqa: E402
from tests.integrations._tokenizer import tiny_tokenizer, word  # noqa: E402

DATASET = "Helsinki-NLP/europarl"
CLASSES = ["en", "fr", "de", "es", "nl"]  # SAEBench's chosen classes for this dataset


def local_texts(dataset_name, train_set_size, test_set_size, random_seed):
    """Class c's texts mix words from its own block of the vocabulary with shared words (a 'language' per class)."""
    rng = random.Random(random_seed)

    def text(c):
        own = [word(4 + 60 * c + rng.randrange(60)) for _ in range(14)]
        shared = [word(304 + rng.randrange(200)) for _ in range(14)]
        words = own + shared
        rng.shuffle(words)
        return " ".join(words)

    def split(n):
        return {name: [text(c) for _ in range(n)] for c, name in enumerate(CLASSES)}

    return split(train_set_size), split(test_set_size)


dataset_utils.get_multi_label_train_test_data = local_texts

sae = SAEBenchTranscoder(folder, layer=layer)
assert type(sae.cfg).__module__.startswith("sae_bench"), type(sae.cfg)  # SAEBench's own CustomSAEConfig
model = tiny_model("gemma2", n_layers=layer + 1, seed=0)
model.tokenizer = tiny_tokenizer(model.cfg.d_vocab)
config = SparseProbingEvalConfig(
    dataset_names=[DATASET],
    probe_train_set_size=120,
    probe_test_set_size=60,
    context_length=32,
    sae_batch_size=32,
    llm_batch_size=32,
    llm_dtype="float32",
    model_name="tiny-gemma2",
    k_values=[1, 2, 5],
)
torch.manual_seed(0)
results, per_class = sp.run_eval_single_sae(config, sae, model, "cpu", artifacts, save_activations=False)
flat = {k: v for k, v in results.items() if isinstance(v, float)}
print(
    json.dumps(
        {
            "results": flat,
            "hook_name": sae.cfg.hook_name,
            "classes": sorted(per_class[f"{DATASET}_results"]["sae_test_accuracy"]),
        }
    )
)
