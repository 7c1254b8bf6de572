"""eval --benchmark-results: eval.md sets the run beside the quality benchmark's rows at the same layer and k
(``eval.benchmark_context``), on a real evaluate() result of a random transcoder (no language model)."""

from __future__ import annotations

import json
import re

import torch
from test_eval_splice import LAYER, _sparse_tc  # its random sparse transcoder (tests/eval is on sys.path)

from matryoshka_ext.data.sites import gemma_sites
from matryoshka_ext.eval.benchmark_context import benchmark_section
from matryoshka_ext.eval.evaluate import EvalConfig, evaluate
from matryoshka_ext.eval.report import write_eval


def _entry(row: str, seed: int, fvu: float, layer: int = LAYER, k: int = 8, mode: str = "transcoder") -> dict:
    prefixes = [{"fvu": fvu + 0.1, "l0_mean": 5.0}, {"fvu": fvu, "l0_mean": 8.0, "delta_ce": 0.05 + fvu / 10}]
    ev = {"prefixes": prefixes, "dead_fraction": 0.01 * seed, "max_density": 0.3 + 0.01 * seed}
    return {"row": row, "seed": seed, "layer": layer, "k": k, "budget": "tokens", "mode": mode, "eval": ev}


def _result(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(200, 64, generator=g), torch.randn(200, 64, generator=g)
    tc = _sparse_tc(seed)
    return evaluate(tc, None, gemma_sites(LAYER), None, EvalConfig(n_tokens=200, splice_tokens=0), activations=[(x, y)])


def test_section_lists_rows_by_fvu_and_names_the_best_peer(tmp_path):
    seed = int(torch.randint(0, 10_000, ()).item())
    res = _result(seed)
    mine = res["transcoders"][0]["prefixes"][-1]["fvu"]
    doc = {
        "meta": {"caches": {str(LAYER): {"heldout": "somewhere", "heldout_tokens": 200}}},
        "runs": [
            _entry("sparsify", 0, 0.29), _entry("sparsify", 1, 0.31),  # mean 0.30 ± 0.0141
            _entry("sparsify_skip", 0, 0.20),  # lower, but has a skip connection: not "the best peer"
            _entry("dl", 0, 0.35),
            _entry("ours_plain", 0, 0.10),  # ours: never the peer
            _entry("sparsify", 2, 0.01, layer=LAYER + 1),  # another layer, another k, SAE mode: left out
            _entry("sparsify", 3, 0.01, k=16),
            _entry("sparsify_sae", 0, 0.01, mode="sae"),
        ],
    }  # fmt: skip
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    md = benchmark_section(res, str(path), k=8)
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| row")]
    names = [ln.split("|")[1].strip() for ln in table]
    assert names == ["**this run**", "ours_plain", "sparsify_skip", "sparsify", "dl"]
    assert f"{mine:.4f}" in table[0]
    assert "| sparsify | 2 | 0.3000 ± 0.0141 |" in md
    m = re.search(r"`(\w+)` at final FVU ([\d.]+); this run is ([\d.]+)% (below|above)", md)
    assert m and m.group(1) == "sparsify" and float(m.group(2)) == 0.3
    rel = mine / 0.3 - 1
    assert m.group(4) == ("below" if rel < 0 else "above")
    assert abs(float(m.group(3)) - abs(rel) * 100) < 0.051
    assert "Not the same held-out tokens" not in md  # 200 tokens both
    doc["meta"]["caches"][str(LAYER)]["heldout_tokens"] = 122_880
    path.write_text(json.dumps(doc))
    assert "Not the same held-out tokens" in benchmark_section(res, str(path), k=8)
    # nothing at this layer and k: the section says so
    assert "nothing to compare" in benchmark_section(res, str(path), k=64)
    assert "nothing to compare" in benchmark_section(res, str(path), k=None)
    # eval.md carries the section after the summary
    write_eval(res, str(tmp_path / "out"), extra_md=md)
    text = (tmp_path / "out" / "eval.md").read_text()
    assert text.index("## Against the quality benchmark") > text.index("Densest latent")
