"""MatryoshkaTranscoder: a sparse transcoder x [d_in] -> y [d_out] whose latents form nested groups.

Training (``forward``) selects with BatchTopK (or per-row TopK) through ``mx.encode`` and trains every prefix
at once with ``mx.nested_mse``:  loss = sum_i w_i * mse_i + aux.

Modules (one job each): ``model`` (the nn.Module: forward, inference, decoder-norm constraint), ``init``
(random and data-dependent initialisation), ``scaling`` (activation scales and their fold), ``skip`` (the affine
skip path), ``pretrained`` (save/load), ``output`` (``TranscoderOutput``).

Conventions (documented choices):
- Activation scaling ("unit_mean_squared_norm"): x and y are multiplied by fp32 scalars x_scale, y_scale so
  that E||x||^2 = E||y||^2 = 1 on the training data. Losses and latent activations live in these scaled units.
  ``save_pretrained`` folds the scales into the weights (into the encoder side, b_dec and W_skip, so decoder
  rows stay unit-norm) and writes scales 1, so a saved transcoder runs on raw activations.
- Skip connection (``skip_connection``): y_hat_p = decode_p(encode(x)) + x @ W_skip for every prefix p,
  W_skip [d_in, d_out] trained from zero. ``decode`` is the sparse part alone; ``reconstruct`` adds the skip
  term; every loss, FVU and AuxK residual includes it.
- FVU of prefix i: sum_{n,d} (r_i - y)^2 / sum_{n,d} (y - mean_n y)^2 on the batch (per-dimension variance
  of y around its batch mean, summed over dimensions) == mse_i / mean((y - ybar)^2).
- AuxK (Gao et al. 2024): latents that have not fired for >= dead_tokens tokens are "dead". Among them the
  top aux_k relu(pre-activations) per token reconstruct the detached residual e = y - r_full (no decoder
  bias). aux = aux_penalty * mean((e_hat - e)^2): the same units as each prefix's MSE term (not divided by
  the residual's variance), so aux_penalty is its weight relative to one prefix term, as in the paper.
- JumpReLU threshold (inference): one global fp32 theta, an EMA (``threshold_momentum``) of the smallest
  positive selected activation of each training batch; the first update sets it directly.
- Dead-latent counters (``tokens_since_fired``, int64) and the threshold are persistent buffers; they
  change only in training mode with gradients enabled (or ``update_stats=True``), never in metric passes.
- Decoder rows have unit norm (``decoder_norm="unit"``): ``project_decoder_grad`` removes the radial gradient
  component before the optimiser step, ``normalize_decoder`` renormalises after it. With ``decoder_norm="free"``
  both are no-ops while training and ``fold_decoder_norms`` brings the saved model back to unit rows.
- Init: see ``init`` (least-squares encoder init, b_dec = target mean, W_skip = 0).
"""

from __future__ import annotations

from ..config import TranscoderConfig
from .model import MatryoshkaTranscoder
from .output import TranscoderOutput
from .pretrained import CONFIG_NAME, FORMAT, WEIGHTS_NAME
from .scaling import mean_squared_norm_scale

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "MatryoshkaTranscoder",
    "TranscoderConfig",
    "TranscoderOutput",
    "mean_squared_norm_scale",
]
