"""Run inside .venv-ctracer: circuit-tracer's own Gemma Scope 2 loader on a ``params.safetensors`` file.

argv: PARAMS_FILE X_FILE OUT_FILE. Loads the file with ``load_gemma_scope_2_transcoder`` (which reads
``affine_skip_connection`` into its W_skip) and writes its forward on X (skip term included). Prints one JSON line.
"""

import json
import sys

import torch
from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_2_transcoder
from safetensors.torch import load_file, save_file

params, x_file, out_file = sys.argv[1:4]
tc = load_gemma_scope_2_transcoder(params, 0, device=torch.device("cpu"), dtype=torch.float32)
x = load_file(x_file)["x"]
with torch.no_grad():
    save_file({"y": tc(x).contiguous(), "skip": tc.compute_skip(x).contiguous()}, out_file)
print(json.dumps({"skip_connection": tc.W_skip is not None}))
