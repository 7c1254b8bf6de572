"""Run inside .venv-dictlearn: load exported folders with dictionary_learning's own loaders and run them.

argv: MATRYOSHKA_DIR JUMPRELU_DIR X_FILE OUT_FILE. Writes encode / forward of X through
utils.load_dictionary (config.json -> class -> from_pretrained) for both folders, plus the Matryoshka SAE's
BatchTopK encode (use_threshold=False). Prints one JSON line.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file

mat_dir, jr_dir, x_file, out_file = sys.argv[1:5]

from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE  # noqa: E402
from dictionary_learning.utils import load_dictionary  # noqa: E402

x = load_file(x_file)["x"]
out, info = {}, {}
for tag, folder in (("mat", mat_dir), ("jr", jr_dir)):
    ae, cfg = load_dictionary(folder, device="cpu")
    info[tag] = {"class": type(ae).__name__, "dict_size": int(ae.dict_size), "activation_dim": int(ae.activation_dim)}
    with torch.no_grad():
        out[f"{tag}_acts"] = ae.encode(x)
        out[f"{tag}_recon"] = ae(x)
direct = MatryoshkaBatchTopKSAE.from_pretrained(f"{mat_dir}/ae.pt")
with torch.no_grad():
    out["mat_batchtopk"] = direct.encode(x, use_threshold=False)
info["mat"].update(k=int(direct.k), group_sizes=direct.group_sizes.tolist(), threshold=float(direct.threshold))
save_file({k: v.contiguous() for k, v in out.items()}, out_file)
print(json.dumps(info))
