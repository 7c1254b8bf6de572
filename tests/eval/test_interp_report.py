"""The interp section of a run's eval.md: added after the eval report, replaced (not repeated) on a rerun of
``interp``, and kept when ``eval`` rewrites the report."""

from matryoshka_ext.eval.interp_command import EVAL_BEGIN, EVAL_END, attach_to_eval_report, eval_section


def _record(tmp_path):
    return {
        "name": "run",
        "n_tokens": 2048,
        "browser": str(tmp_path / "interp" / "run" / "browser.html"),
        "browser_mb": 1.25,
        "timing": {"absorption_s": 1.0, "scan_s": 2.0, "total_s": 3.0},
        "hierarchy": {"groups": [{"group": 1, "latents": 64, "live": 60}, {"group": 2, "latents": 192, "live": 150,
                                  "with_parent": 150, "mean_p_parent": 0.75}]},
    }  # fmt: skip


def test_section_is_added_replaced_and_kept_by_eval(tmp_path):
    from matryoshka_ext.eval.report import _interp_section

    (tmp_path / "eval").mkdir()
    md = tmp_path / "eval" / "eval.md"
    md.write_text("# Transcoder evaluation\n\ntable\n")
    rec = _record(tmp_path)
    sec = eval_section(rec, [None], str(tmp_path / "interp"), str(tmp_path / "eval"))
    assert "(../interp/run/browser.html)" in sec and "(../interp/interp.md)" in sec and "1.2 MB" in sec
    assert "| 2 | 192 | 150 | 150 | 0.750 |" in sec
    attach_to_eval_report(str(md), sec)
    rec["browser_mb"] = 2.5
    attach_to_eval_report(str(md), eval_section(rec, [None], str(tmp_path / "interp"), str(tmp_path / "eval")))
    text = md.read_text()
    assert text.startswith("# Transcoder evaluation\n\ntable\n") and text.count(EVAL_BEGIN) == 1
    assert "2.5 MB" in text and "1.2 MB" not in text and text.rstrip().endswith(EVAL_END)
    kept = _interp_section(str(md))
    assert kept.startswith(EVAL_BEGIN) and "2.5 MB" in kept
    assert _interp_section(str(tmp_path / "missing.md")) == ""
