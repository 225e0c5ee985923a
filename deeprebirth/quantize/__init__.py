"""int8 quantization of (slimmed) models with PyTorch 2 export (PT2E, torchao), shipped as an
ExecuTorch ``.pte`` (XNNPACK int8 kernels) or a ``torch.export`` program for inductor (x86).

Slimming removes non-tensor layers; quantization makes the tensor layers that remain cheaper:
the two compose (the paper's GoogLeNet-Slim-Tucker, with int8 in the place of Tucker).

Example:
    >>> from deeprebirth.quantize import quantize_model, save_quantized
    >>> q = quantize_model(slim, calibration_images, backend="xnnpack")  # doctest: +SKIP
    >>> print(q.share.summary())  # doctest: +SKIP
    int8: 40/40 conv/linear layers (100%); 55 quantize, 104 dequantize
    >>> save_quantized(q, "slim_int8.pte", metadata).path  # doctest: +SKIP

See ``docs/quantize.md``.
"""

from __future__ import annotations

from deeprebirth.quantize.backends import BACKENDS, QuantizeError, check_backend, make_quantizer
from deeprebirth.quantize.calibration import collect_calibration_batches
from deeprebirth.quantize.capture import capture_for_quantization
from deeprebirth.quantize.int8_share import Int8Share, int8_share, lowered_int8_share
from deeprebirth.quantize.pipeline import QuantizedModel, quantize_model
from deeprebirth.quantize.save import (
    InductorRunner,
    SavedQuantized,
    inductor_runner,
    save_quantized,
)

__all__ = [
    "BACKENDS",
    "InductorRunner",
    "Int8Share",
    "QuantizeError",
    "QuantizedModel",
    "SavedQuantized",
    "capture_for_quantization",
    "check_backend",
    "collect_calibration_batches",
    "inductor_runner",
    "int8_share",
    "lowered_int8_share",
    "make_quantizer",
    "quantize_model",
    "save_quantized",
]
