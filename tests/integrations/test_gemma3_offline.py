"""One end-to-end check on the real model: a transcoder trained briefly on the offline Gemma 3 270M (layer 6),
exported to SAELens, loaded by ``SAE.load_from_disk`` and spliced into ``HookedSAETransformer`` gives the spliced
next-token loss our evaluation measures."""

from __future__ import annotations

import copy

import pytest
import torch

from ._peers import import_peer

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his old house.",
    "In the beginning of the nineteenth century, the small village by the river was home to weavers and smiths.",
    "To install the package, run the setup script and then import the module from your Python interpreter.",
    "She opened the letter slowly, unsure whether the news inside would change everything she had planned.",
]


@pytest.mark.slow
def test_gemma3_270m_saelens_splice(tmp_path):
    sae_lens = import_peer("sae_lens", "sae-lens")
    from sae_lens import HookedSAETransformer

    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.data import gemma_sites, load_model
    from matryoshka_ext.eval.splice import SpliceStats, splice_batch
    from matryoshka_ext.integrations import export_saelens
    from matryoshka_ext.loaders import load_transcoder
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    model = load_model("gemma-3-270m-offline")
    sites = gemma_sites(6)
    # equal-length rows, no padding (the tokenizer pads on the left, which start_at_layer forwards cannot see)
    rows = [model.to_tokens(t, prepend_bos=True)[0] for t in TEXTS]
    tokens = torch.stack([r[: min(len(r) for r in rows)] for r in rows])  # [4, T], BOS first
    special = sorted({model.tokenizer.bos_token_id, model.tokenizer.pad_token_id})  # never spliced nor scored
    keep = ~torch.isin(tokens, torch.tensor(special))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(sites.hooks))
    x, y = cache[sites.input_hook][keep], cache[sites.output_hook][keep]

    torch.manual_seed(0)
    d = model.cfg.d_model
    cfg = TranscoderConfig(d_in=d, d_out=d, dict_size=1024, group_sizes=[128, 128, 256, 512], k=16, aux_k=0)
    tc = MatryoshkaTranscoder(cfg)
    tc.initialize_from_batch(x, y)
    opt = torch.optim.Adam(tc.parameters(), lr=2e-3)
    for _ in range(30):
        out = tc(x, y)
        opt.zero_grad()
        out.loss.backward()
        tc.project_decoder_grad()
        opt.step()
        tc.normalize_decoder()
    tc.eval()
    folder = tc.save_pretrained(tmp_path / "ours")

    sl = export_saelens(folder, tmp_path / "sl", layer=6, model_name="gemma-3-270m-offline")
    sae = sae_lens.SAE.load_from_disk(str(sl))
    assert sae.cfg.metadata.model_name == "google/gemma-3-270m"

    stats = SpliceStats()
    ours = load_transcoder(folder)
    splice_batch(model, sites, tokens, keep, [("tc", lambda xk: ours.reconstruct(xk))], stats)

    hcfg = copy.copy(model.cfg)
    hcfg.init_weights = False  # the weights come from the loaded model: skip 270M random inits
    hst = HookedSAETransformer(hcfg, tokenizer=model.tokenizer)
    hst.load_state_dict(model.state_dict())
    hst.eval()
    del model
    with torch.no_grad():
        logits = hst.run_with_saes(tokens, saes=[sae], exclude_special_tokens=special)
    scored = keep[:, :-1] & keep[:, 1:]
    lp = torch.log_softmax(logits[:, :-1][scored].double(), -1)
    ce = float(-lp.gather(1, tokens[:, 1:][scored][:, None]).mean())
    assert ce == pytest.approx(stats.mean_ce("tc"), rel=1e-4)
    assert stats.mean_ce("tc") > stats.mean_ce("clean")  # a 30-step transcoder is worse than the real MLP
