"""Hook sites: where a transcoder reads its input and writes its target, in TransformerLens hook names.

The Gemma Scope transcoder sites are defined once here (`gemma_sites`) and used by training, evaluation and
splicing alike, so the three can never disagree about what "layer L" means.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Gemma Scope transcoder input: after the pre-MLP RMSNorm, *before* its gain (x / rms(x)).
GEMMA_INPUT_HOOK = "blocks.{layer}.ln2.hook_normalized"
#: Gemma Scope transcoder target: the MLP output after the post-MLP RMSNorm.
GEMMA_OUTPUT_HOOK = "blocks.{layer}.hook_mlp_out"


@dataclass(frozen=True)
class Sites:
    """One transcoder's site pair: it reads ``input_hook`` [.., d_in] and predicts ``output_hook``."""

    layer: int
    input_hook: str
    output_hook: str

    @property
    def hooks(self) -> tuple[str, str]:
        """(input_hook, output_hook)."""
        return (self.input_hook, self.output_hook)


def sites_for(layer: int, input_hook: str | None = None, output_hook: str | None = None) -> Sites:
    """Sites at ``layer`` from hook templates (``{layer}`` is filled in); missing ones default to Gemma's.

    >>> sites_for(3, "blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out").input_hook
    'blocks.3.hook_resid_mid'
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    inp = (input_hook or GEMMA_INPUT_HOOK).format(layer=layer)
    out = (output_hook or GEMMA_OUTPUT_HOOK).format(layer=layer)
    return Sites(layer=layer, input_hook=inp, output_hook=out)


def gemma_sites(layer: int) -> Sites:
    """The Gemma Scope transcoder sites: ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``."""
    return sites_for(layer)
