"""Our kernels inside SAELens training: ``MatryoshkaBatchTopKTrainingSAE`` with ``mx.encode`` / ``mx.nested_mse``.

SAELens' Matryoshka BatchTopK SAE (sae-lens 6.x, ``sae_lens.saes.matryoshka_batchtopk_sae``) builds the dense
[N, F] activations, decodes every level densely, and backpropagates through a dense top-k. This subclass keeps
its math and replaces the work:

    sae_in = process_sae_in(x)                               (x - b_dec if apply_b_dec_to_input; its hooks run)
    n      = ||W_dec[f]||  (1 when rescale_acts_by_decoder_norm is off)
    acts   = mx.encode(sae_in, W_enc * n, b_enc * n, k, "batch")      == BatchTopK(hidden_pre), hidden_pre * n
    L_i    = d * mx.nested_mse(acts, W_dec / n, b_dec, x, widths)[i]  == sum_d (r_i - x)^2 averaged over the batch
    loss   = sum_i L_i + aux                                  (unweighted sum over levels, the outer one included)

which is SAELens' loss term for term: ``mse_loss`` = outer level, ``inner_mse_loss_{width}`` = the others, and the
TopK auxiliary loss (or the per-level one with ``use_matryoshka_aux_loss``) on the dead latents, computed from the
dead columns only (k_aux = d_in // 2, scaled by min(num_dead / k_aux, 1), times ``aux_loss_coefficient``). The
``topk_threshold`` EMA is updated the same way. One sparse pass gives every level's loss and gradient; nothing
of size N x F is built after the encoder GEMM.

Differences (documented, none affects the loss or gradients): ``feature_acts`` and ``hidden_pre`` in the returned
``TrainStepOutput`` are sparse COO tensors holding the selected entries (SAELens' trainer handles sparse
``feature_acts``; it does not read ``hidden_pre``) unless ``dense_outputs=True``; ``sae_out`` is detached (only
logged); the per-activation hooks ``hook_sae_acts_pre/post`` and ``hook_sae_recons`` do not fire in training.
Requirements: integer k (k * N selections), ``normalize_activations`` without run-time rescaling (not
``constant_norm_rescale`` / ``layer_norm``), ``reshape_activations="none"``.

Use it in place of SAELens' class, or convert an existing one in place:

    from matryoshka_ext.integrations.saelens_training import MxMatryoshkaBatchTopKTrainingSAE, use_mx_kernels
    sae = MxMatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(d_in=640, d_sae=8192, k=32,
                                                                                matryoshka_widths=[1024, 8192]))
    sae = use_mx_kernels(existing_sae)            # same object, same parameters, our training step
    register_with_saelens()                       # architecture "matryoshka_batchtopk_mx" for SAELens' runner

Inference (``encode``/``decode``), saving (as a JumpReLU SAE) and everything else are SAELens' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from ..sparse import SparseActs

ARCHITECTURE = "matryoshka_batchtopk_mx"


def _mx():
    from .. import ops

    return ops


def _coo(acts: SparseActs, values: torch.Tensor) -> torch.Tensor:
    """[N, F] sparse COO tensor with ``values`` at the CSR entries of ``acts``."""
    idx = torch.stack([acts.row_ids(), acts.indices])
    return torch.sparse_coo_tensor(idx, values, acts.shape, is_coalesced=True, check_invariants=False)


def _row_topk_acts(pre: torch.Tensor, k: int) -> SparseActs:
    """Per row, the k largest entries of ``pre`` [N, G] *without* relu (SAELens' auxiliary selection keeps
    negative pre-activations) as SparseActs with ascending indices; values stay differentiable."""
    top = pre.topk(k, dim=-1, sorted=False)
    order = top.indices.argsort(dim=-1)
    idx = top.indices.gather(-1, order)
    vals = top.values.gather(-1, order)
    n = pre.shape[0]
    offsets = torch.arange(n + 1, device=pre.device, dtype=torch.int64) * k
    return SparseActs(vals.reshape(-1), idx.reshape(-1).to(torch.int64), offsets, pre.shape[1])


class MxMatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAE):
    """SAELens' ``MatryoshkaBatchTopKTrainingSAE`` whose ``training_forward_pass`` runs on our sparse kernels.

    Same parameters, config, loss and gradients as the parent (see the module docstring); ``dense_outputs``
    (class or instance attribute) returns dense ``feature_acts`` / ``hidden_pre`` [N, F] like the parent does.
    """

    dense_outputs: bool = False

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """One training forward (x = step_input.sae_in [N, d_in]) -> TrainStepOutput with SAELens' loss terms."""
        cfg = self.cfg
        ops = _mx()
        x = step_input.sae_in
        self._check_supported(x)
        k = int(cfg.k)
        widths = list(cfg.matryoshka_widths)

        sae_in = self.process_sae_in(x)  # hooks, dtype, minus b_dec when apply_b_dec_to_input
        if cfg.rescale_acts_by_decoder_norm:
            norm = self.W_dec.norm(dim=-1)  # [F]: hidden_pre * norm selects; decoding divides it back out
            W_enc, b_enc, W_dec = self.W_enc * norm, self.b_enc * norm, self.W_dec / norm[:, None]
        else:
            W_enc, b_enc, W_dec = self.W_enc, self.b_enc, self.W_dec
        acts = ops.encode(sae_in.contiguous(), W_enc, b_enc, k, mode="batch")
        target = x.to(W_dec.dtype)
        d = target.shape[-1]
        level = ops.nested_mse(acts, W_dec, self.b_dec, target, widths) * d  # [m] sum over d, mean over N

        with torch.no_grad():
            det = acts.detach()
            recons = ops.nested_decode(det, W_dec.detach(), self.b_dec.detach(), widths)  # [m, N, d]

        losses: dict[str, torch.Tensor] = {"mse_loss": level[-1]}
        losses.update(self._aux_losses(step_input, sae_in, W_enc, b_enc, W_dec, recons, widths))
        total = losses["mse_loss"] + losses["auxiliary_reconstruction_loss"]  # the parent's order of summation
        for i, width in enumerate(widths[:-1]):
            losses[f"inner_mse_loss_{width}"] = level[i]
            total = total + level[i]

        self._update_threshold(det.values)
        if self.dense_outputs:
            feature_acts = acts.to_dense()
            hidden_pre = feature_acts.detach()  # selected entries only (the full [N, F] pre-activations never exist)
        else:
            feature_acts = _coo(acts, acts.values)
            hidden_pre = _coo(det, det.values)
        out = TrainStepOutput(
            sae_in=x,
            sae_out=recons[-1],
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=total,
            losses=losses,
        )
        out.metrics["topk_threshold"] = self.topk_threshold
        return out

    # ------------------------------------------------------------------------------------------------------
    def _check_supported(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        if x.dim() != 2:
            raise ValueError(f"sae_in must be [N, d_in], got {tuple(x.shape)}")
        if float(cfg.k) != int(cfg.k):
            raise ValueError(f"cfg.k must be an integer for the mx kernels (k*N selections), got {cfg.k}")
        if cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ValueError(f"normalize_activations={cfg.normalize_activations!r} rescales at run time; unsupported")
        if cfg.reshape_activations != "none":
            raise ValueError(f"reshape_activations={cfg.reshape_activations!r} is not supported")

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor) -> None:
        """BatchTopKTrainingSAE.update_topk_threshold on the selected values (same EMA, same float64 state)."""
        pos = values[values > 0]
        if pos.numel():
            lr = self.cfg.topk_threshold_lr
            self.topk_threshold = (1 - lr) * self.topk_threshold + lr * pos.min().to(self.topk_threshold.dtype)

    def _aux_losses(
        self,
        step_input: TrainStepInput,
        sae_in: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        recons: torch.Tensor,
        widths: list[int],
    ) -> dict[str, torch.Tensor]:
        """{"auxiliary_reconstruction_loss": ...}: SAELens' TopK (or per-level Matryoshka) auxiliary loss, from
        the pre-activations of the dead latents only. recons [m, N, d] are the detached level reconstructions."""
        dead = step_input.dead_neuron_mask
        x = step_input.sae_in
        zero = recons.new_zeros(())
        if dead is None or (num_dead := int(dead.sum())) == 0:
            return {"auxiliary_reconstruction_loss": zero}
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ValueError("the TopK auxiliary loss does not support run-time activation normalization")
        k_aux = x.shape[-1] // 2
        d = x.shape[-1]
        ops = _mx()
        if self.cfg.use_matryoshka_aux_loss:
            parts, prev = [], 0
            for i, width in enumerate(widths):
                idx = dead[prev:width].nonzero().squeeze(1) + prev
                if idx.numel():
                    scale = min(idx.numel() / k_aux, 1.0)
                    parts.append(
                        scale
                        * self._aux_term(
                            sae_in, W_enc, b_enc, W_dec, idx, min(k_aux, idx.numel()), (x - recons[i]).detach(), ops, d
                        )
                    )
                prev = width
            loss = torch.stack(parts).sum() if parts else zero
            return {"auxiliary_reconstruction_loss": self.cfg.aux_loss_coefficient * loss}
        idx = dead.nonzero().squeeze(1)
        scale = min(num_dead / k_aux, 1.0)
        term = self._aux_term(sae_in, W_enc, b_enc, W_dec, idx, min(k_aux, num_dead), (x - recons[-1]).detach(), ops, d)
        return {"auxiliary_reconstruction_loss": self.cfg.aux_loss_coefficient * scale * term}

    @staticmethod
    def _aux_term(
        sae_in: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        idx: torch.Tensor,
        k_aux: int,
        residual: torch.Tensor,
        ops: Any,
        d: int,
    ) -> torch.Tensor:
        """sum_d (top-k_aux dead latents @ W_dec[dead] - residual)^2 averaged over rows (no decoder bias)."""
        pre = torch.addmm(b_enc[idx], sae_in, W_enc[:, idx])  # [N, n_dead] == hidden_pre[:, dead]
        acts = _row_topk_acts(pre, k_aux)
        W = W_dec[idx]
        zero_bias = torch.zeros(W.shape[1], device=W.device, dtype=W.dtype)
        return ops.nested_mse(acts, W, zero_bias, residual.to(W.dtype), [idx.numel()])[0] * d


@dataclass
class MxMatryoshkaBatchTopKTrainingSAEConfig(MatryoshkaBatchTopKTrainingSAEConfig):
    """``MatryoshkaBatchTopKTrainingSAEConfig`` whose architecture (``matryoshka_batchtopk_mx``) selects
    ``MxMatryoshkaBatchTopKTrainingSAE`` in SAELens' training registry (after ``register_with_saelens()``)."""

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


def register_with_saelens() -> None:
    """Register architecture ``matryoshka_batchtopk_mx`` with SAELens' training registry (idempotent), so
    ``LanguageModelSAERunnerConfig(sae=MxMatryoshkaBatchTopKTrainingSAEConfig(...))`` trains on our kernels."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(
            ARCHITECTURE, MxMatryoshkaBatchTopKTrainingSAE, MxMatryoshkaBatchTopKTrainingSAEConfig
        )


def use_mx_kernels(sae: MatryoshkaBatchTopKTrainingSAE) -> MxMatryoshkaBatchTopKTrainingSAE:
    """Switch an existing SAELens Matryoshka BatchTopK training SAE to our training step, in place (same object,
    parameters and optimizer state); returns it."""
    if not isinstance(sae, MatryoshkaBatchTopKTrainingSAE):
        raise TypeError(f"expected a MatryoshkaBatchTopKTrainingSAE, got {type(sae).__name__}")
    sae.__class__ = MxMatryoshkaBatchTopKTrainingSAE
    return sae  # type: ignore[return-value]
