"""Hook-site definitions (the one place where Gemma Scope's transcoder sites are named)."""

import dataclasses

import pytest

from matryoshka_ext.data.sites import Sites, gemma_sites, sites_for


def test_gemma_sites_names() -> None:
    s = gemma_sites(6)
    assert s == Sites(6, "blocks.6.ln2.hook_normalized", "blocks.6.hook_mlp_out")
    assert s.hooks == ("blocks.6.ln2.hook_normalized", "blocks.6.hook_mlp_out")


def test_sites_for_templates_and_defaults() -> None:
    s = sites_for(3, "blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_resid_post")
    assert (s.input_hook, s.output_hook) == ("blocks.3.hook_resid_mid", "blocks.3.hook_resid_post")
    assert sites_for(12) == gemma_sites(12)
    assert sites_for(2, input_hook="blocks.2.hook_mlp_in").output_hook == "blocks.2.hook_mlp_out"


def test_sites_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        gemma_sites(1).layer = 2  # type: ignore[misc]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            sites_for(bad)  # type: ignore[arg-type]
