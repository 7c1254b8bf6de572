"""Run inside .venv-ctracer: load an exported transcoder set with circuit-tracer's own loaders and use it.

argv: CACHE_DIR REF X_FILE OUT_FILE. The export lives at CACHE_DIR/REF (circuit-tracer's cache layout, the same
files as a hub repo). Writes, per layer, circuit-tracer's encode / decode / sparse-path reconstruction of X,
saves the set with its own ``to_safetensors`` into CACHE_DIR/resaved, then builds a TransformerLens
ReplacementModel on a tiny Gemma-2 with the set and computes an attribution graph.
Skip transcoders (a W_skip in the layer files) get their input passed to every decode, as circuit-tracer requires.
Prints one JSON line.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file

cache_dir, ref, x_file, out_file = sys.argv[1:5]
cpu = torch.device("cpu")

from circuit_tracer.transcoder import load_transcoder_set  # noqa: E402
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub  # noqa: E402

tset, config = load_transcoder_from_hub(ref, cache_dir=cache_dir, device=cpu, dtype=torch.float32)
x = load_file(x_file)["x"]
out = {}
for layer, tc in enumerate(tset):
    acts = tc.encode(x)
    out[f"acts_{layer}"] = acts.detach()
    out[f"recon_{layer}"] = tc.decode(acts, x).detach()
    sparse, _ = tc.encode_sparse(x.clone(), zero_positions=slice(0, 0))
    out[f"recon_sparse_{layer}"] = tc.decode_sparse(sparse, x)[0].detach()
# the lazy (memory-mapped) path reads W_enc / W_dec straight from our files
lazy = load_transcoder_set(
    {i: f"{cache_dir}/{ref}/layer_{i}.safetensors" for i in range(len(tset))},
    scan="mx",
    feature_input_hook=config["feature_input_hook"],
    feature_output_hook=config["feature_output_hook"],
    device=cpu,
    lazy_encoder=True,
    lazy_decoder=True,
)
out["recon_lazy_1"] = lazy[1].decode(lazy[1].encode(x), x).detach()
save_file({k: v.contiguous() for k, v in out.items()}, out_file)
tset.to_safetensors(f"{cache_dir}/resaved")  # circuit-tracer's own writer: files our loader must read

# attribution graph on a tiny model with this transcoder set
from circuit_tracer import attribute  # noqa: E402
from circuit_tracer.replacement_model.replacement_model_transformerlens import (  # noqa: E402
    TransformerLensReplacementModel,
)

from matryoshka_ext.data import tiny_model  # noqa: E402
from tests.integrations._tokenizer import tiny_tokenizer  # noqa: E402

base = tiny_model("gemma2", n_layers=len(tset), seed=0)
model = TransformerLensReplacementModel.from_config(base.cfg, tset)
model.load_state_dict(base.state_dict(), strict=False)
model.tokenizer = tiny_tokenizer(base.cfg.d_vocab)
tokens = torch.randint(4, base.cfg.d_vocab, (10,), generator=torch.Generator().manual_seed(0))
tokens[0] = 2
graph = attribute(tokens, model, max_n_logits=3, batch_size=32)
feats = graph.active_features
print(
    json.dumps(
        {
            "n_layers": len(tset),
            "skip_connection": bool(tset.skip_connection),
            "hooks": [tset.feature_input_hook, tset.feature_output_hook],
            "config_model_kind": config["model_kind"],
            "n_active_features": int(feats.shape[0]),
            "max_feature_index": int(feats[:, 2].max()) if feats.numel() else -1,
            "adjacency": list(graph.adjacency_matrix.shape),
            "finite": bool(torch.isfinite(graph.adjacency_matrix).all()),
        }
    )
)
