"""`import matryoshka_ext` stays light (torch only): the op layer must work on a bare GPU box or inside peers."""

import subprocess
import sys

HEAVY = ["transformer_lens", "transformers", "datasets", "wandb", "matplotlib", "sae_lens", "tqdm", "yaml"]


def test_import_pulls_in_torch_only():
    # Compared against plain `import torch`, which may itself load some of these (e.g. tqdm).
    code = (
        "import sys, torch; base = set(sys.modules); import matryoshka_ext as mx; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules and m not in base]; "
        "print(','.join(heavy)); assert mx.topk and mx.nested_mse"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported by `import matryoshka_ext`: {out.stdout}"
