"""Quantization-aware finetuning: a few steps that teach the fake-quantized model to match the
float model it came from.

The loss is the distillation loss of the float model's logits (KL divergence of the softmaxes,
temperature 1), so no labels are needed: the calibration images are the training set. The steps
move the weights (and the observed ranges, which keep updating) to where rounding costs least.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from deeprebirth.quantize.backends import QuantizeError


def distillation_loss(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(reference) || softmax(logits))``, averaged over the batch; 0 when the two
    models give the same class probabilities.

    Example:
        >>> z = torch.randn(4, 10)
        >>> distillation_loss(z, z).abs().item() < 1e-6
        True
    """
    return F.kl_div(
        F.log_softmax(logits.float(), 1),
        F.log_softmax(reference_logits.float(), 1),
        reduction="batchmean",
        log_target=True,
    )


def train_qat(
    prepared: fx.GraphModule,
    reference: nn.Module,
    batches: list[torch.Tensor],
    steps: int,
    lr: float = 1e-4,
) -> list[float]:
    """Trains ``prepared`` (the output of ``prepare_qat_pt2e``) for ``steps`` SGD steps (momentum
    0.9) on ``batches`` in turn, against ``reference`` (the float model, not changed); returns
    the loss of each step. ``prepared`` is left in eval mode.

    Raises:
        QuantizeError: ``steps`` < 0, ``lr`` <= 0 or no batches.
        FloatingPointError: the loss is not finite (the message suggests a lower ``lr``).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if steps < 0 or not lr > 0 or not batches:
        raise QuantizeError(
            f"expected qat steps >= 0, lr > 0 and calibration batches, but got steps={steps}, "
            f"lr={lr}, {len(batches)} batches"
        )
    reference = reference.eval()
    move_exported_model_to_train(prepared)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        x = batches[step % len(batches)]
        with torch.no_grad():
            target = reference(x)
        loss = distillation_loss(prepared(x), target)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"quantization-aware step {step + 1}: the loss is {loss.item()}; lower the lr "
                f"(now {lr:g})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    move_exported_model_to_eval(prepared)
    return losses
