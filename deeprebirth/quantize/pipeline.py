"""``quantize_model``: capture, annotate, calibrate, (finetune), convert.

The PT2E flow of torchao: ``torch.export`` of the portable model
(:func:`~deeprebirth.quantize.capture.capture_for_quantization`), ``prepare_pt2e`` (or
``prepare_qat_pt2e``) with the backend's quantizer (:func:`~deeprebirth.quantize.backends.make_quantizer`),
the calibration images through the observers, optional quantization-aware steps
(:func:`~deeprebirth.quantize.qat.train_qat`), ``convert_pt2e``. The result is a graph of float
operators between ``quantize`` / ``dequantize`` nodes that computes what the int8 kernels compute
(the reference representation); :func:`~deeprebirth.quantize.save.save_quantized` ships it.
"""

from __future__ import annotations

import copy
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from deeprebirth.export._optional import quiet_import_logs
from deeprebirth.quantize.backends import QuantizeError, check_backend, make_quantizer
from deeprebirth.quantize.calibration import collect_calibration_batches, run_calibration
from deeprebirth.quantize.capture import capture_for_quantization
from deeprebirth.quantize.ceil_mode import remove_ceil_mode_pools
from deeprebirth.quantize.int8_share import Int8Share, int8_share
from deeprebirth.quantize.qat import train_qat


@dataclass
class QuantizedModel:
    """A model quantized for one backend.

    Attributes:
        module: the converted graph (eval mode; ``.eval()`` / ``.train()`` only switch dropout
            and BatchNorm): ``module(x)`` for ``x`` of shape ``(N, C, H, W)`` computes in float
            what the backend's int8 kernels compute.
        backend: ``"xnnpack"`` or ``"x86_inductor"``.
        per_channel: weights quantized per output channel (else per tensor).
        example_input: the input the exports are made at (one image ``(1, C, H, W)`` unless
            given): a ``.pte`` runs exactly this shape, a ``.pt2`` any batch.
        calibration_images: images the observers saw.
        qat_losses: the loss of each quantization-aware step (empty without).
        share: how much of the graph is int8 (:class:`~deeprebirth.quantize.int8_share.Int8Share`).
    """

    module: fx.GraphModule
    backend: str
    per_channel: bool
    example_input: torch.Tensor
    calibration_images: int
    qat_losses: list[float] = field(default_factory=list)
    share: Int8Share | None = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def describe(self) -> str:
        """One line: backend, granularity, calibration and the int8 share."""
        granularity = "per-channel" if self.per_channel else "per-tensor"
        qat = f", {len(self.qat_losses)} QAT steps" if self.qat_losses else ""
        share = self.share.summary() if self.share else ""
        return (
            f"{self.backend} ({granularity} weights), {self.calibration_images} calibration "
            f"images{qat}; {share}"
        )


def _convert(prepared: fx.GraphModule) -> fx.GraphModule:
    """``convert_pt2e`` of ``prepared``, in eval mode, whose ``.eval()`` / ``.train()`` switch
    dropout and BatchNorm (the converted graph refuses both calls otherwise, and exporters make
    the model they are given ``.eval()``)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)

    def train(self: fx.GraphModule, mode: bool = True) -> fx.GraphModule:
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        self.training = mode
        return self

    def evaluation(self: fx.GraphModule) -> fx.GraphModule:
        return train(self, False)

    converted.train = types.MethodType(train, converted)
    converted.eval = types.MethodType(evaluation, converted)
    return converted.eval()


def quantize_model(
    model: nn.Module,
    calibration: Iterable[Any],
    backend: str = "xnnpack",
    *,
    per_channel: bool = True,
    calibration_images: int = 0,
    qat_steps: int = 0,
    qat_lr: float = 1e-4,
    batch_size: int = 32,
    example_input: torch.Tensor | None = None,
) -> QuantizedModel:
    """Quantizes ``model`` to int8 for ``backend`` by PT2E post-training calibration, optionally
    followed by ``qat_steps`` quantization-aware steps.

    Args:
        model: the float network (not modified), e.g. a slimmed GoogLeNet with ConvPool2d and
            BranchConv2d modules (made portable first).
        calibration: images, batches or ``(images, labels)`` pairs
            (:func:`~deeprebirth.quantize.calibration.collect_calibration_batches`), preprocessed
            as the model expects them.
        backend: one of :data:`~deeprebirth.quantize.backends.BACKENDS`.
        per_channel: weights per output channel (default; ``x86_inductor`` takes nothing else)
            or per tensor (``xnnpack`` only).
        calibration_images: use only the first N images (0: all).
        qat_steps: quantization-aware steps after calibration (0: post-training only); they
            distil the float model (:mod:`deeprebirth.quantize.qat`) at ``qat_lr``.
        batch_size: images per calibration / QAT batch.
        example_input: ``(N, C, H, W)`` to capture and export at (default: the first
            calibration image).

    Returns:
        the :class:`QuantizedModel`.

    Raises:
        QuantizeError: unknown backend, no calibration images, images of another shape than
            ``example_input``, or a model ``torch.export`` cannot capture, each before any
            calibration runs; the message says which.
        ImportError: the backend's packages are missing.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
        >>> q = quantize_model(net, torch.randn(16, 3, 8, 8))  # doctest: +SKIP
        >>> q.share.summary()  # doctest: +SKIP
        'int8: 2/2 conv/linear layers (100%); 3 quantize, 5 dequantize'
    """
    check_backend(backend, per_channel)
    if qat_steps < 0:
        raise QuantizeError(f"expected qat_steps >= 0, but got {qat_steps}")
    shape = tuple(example_input.shape[1:]) if example_input is not None else None
    batches = collect_calibration_batches(calibration, shape, calibration_images, batch_size)
    example = example_input if example_input is not None else batches[0][:1]
    captured = capture_for_quantization(model, example)
    if backend == "x86_inductor":
        remove_ceil_mode_pools(captured)  # inductor's int8 max-pool rounds down (see ceil_mode)
    quantizer = make_quantizer(backend, per_channel, qat=qat_steps > 0, graph_module=captured)
    with quiet_import_logs(), warnings.catch_warnings():
        # torchao notes each pool it keeps in float ("The input of maxpool2d is not quantized").
        warnings.filterwarnings("ignore", message=".*input of maxpool2d is not quantized.*")
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        prepare = prepare_qat_pt2e if qat_steps else prepare_pt2e
        prepared = prepare(captured, quantizer)
    images = run_calibration(prepared, batches)
    losses = []
    if qat_steps:
        reference = copy.deepcopy(model).eval()
        losses = train_qat(prepared, reference, batches, qat_steps, qat_lr)
    converted = _convert(prepared)
    return QuantizedModel(
        converted,
        backend,
        per_channel,
        example.detach().clone(),
        images,
        losses,
        int8_share(converted),
    )
