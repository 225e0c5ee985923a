"""The int8 backends: which PT2E quantizer annotates the graph for which runtime.

- ``"xnnpack"``: ExecuTorch's ``XNNPACKQuantizer`` with its symmetric config: int8 activations
  (per tensor, [-128, 127]) and int8 weights, symmetric per output channel (default) or per
  tensor. The program ships as a ``.pte`` whose int8 convolutions and linears run in XNNPACK's
  int8 kernels (phones, and x86 / ARM CPUs through ExecuTorch).
- ``"x86_inductor"``: torchao's ``X86InductorQuantizer``: uint8 activations (per tensor, affine)
  and int8 weights per output channel (the only form inductor's oneDNN kernels take). The program
  ships as a ``torch.export`` ``.pt2``; ``torch.compile`` with inductor's ``freezing`` fuses each
  dequantize -> conv -> quantize into one oneDNN int8 convolution (x86 servers).

Only the names and checks live here at import time; torchao and executorch are imported when a
quantizer is made (they take seconds to import).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from deeprebirth.export._optional import import_optional, quiet_import_logs

BACKENDS = ("xnnpack", "x86_inductor")
# The packages each backend's quantizer and runtime come from.
BACKEND_PACKAGES = {"xnnpack": ("torchao", "executorch"), "x86_inductor": ("torchao",)}
PURPOSE = "int8 quantization (deeprebirth.quantize)"


class QuantizeError(ValueError):
    """A model, backend or calibration set that cannot be quantized; the message says why."""


def check_backend(backend: str, per_channel: bool = True) -> None:
    """Fails before any work on an unknown backend, a weight granularity the backend does not
    take, or a backend whose packages are not installed (found without importing them).

    Raises:
        QuantizeError: the message names the backend and lists the known ones.
        ImportError: a package of the backend is missing (the message says what to install).
    """
    if backend not in BACKENDS:
        raise QuantizeError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "x86_inductor" and not per_channel:
        raise QuantizeError(
            "backend 'x86_inductor' quantizes weights per channel only (inductor's oneDNN int8 "
            "kernels take no per-tensor weights); drop per-tensor or use backend 'xnnpack'"
        )
    for package in BACKEND_PACKAGES[backend]:
        if importlib.util.find_spec(package) is None:
            import_optional(package, package, f"{PURPOSE}, backend {backend!r}")


def module_names_of_type(graph_module: Any, module_type: type) -> list[str]:
    """The names of the modules of ``module_type`` that the nodes of an exported graph came from
    (read from their ``nn_module_stack``), in graph order."""
    qualname = f"{module_type.__module__}.{module_type.__qualname__}"
    names: dict[str, None] = {}
    for node in graph_module.graph.nodes:
        for name, kind in (node.meta.get("nn_module_stack") or {}).values():
            kind = f"{kind.__module__}.{kind.__qualname__}" if isinstance(kind, type) else kind
            if kind == qualname:
                names[name] = None
    return list(names)


def make_quantizer(
    backend: str, per_channel: bool = True, qat: bool = False, graph_module: Any = None
) -> Any:
    """The PT2E quantizer of ``backend`` (see the module docstring), for post-training
    calibration or, with ``qat``, for quantization-aware training (fake-quantize modules).

    Local response normalisations stay in float: their squares and their base
    (``k + alpha * mean``, a range of ~1e-4 around k) lose their precision in int8, and XNNPACK
    refuses the int8 form of their channel padding when the program loads ("Failed to create
    StaticConstantPad"). ``X86InductorQuantizer`` takes them by module name only: pass the
    ``graph_module`` to be annotated to find them.

    Raises:
        QuantizeError / ImportError: as :func:`check_backend`.
    """
    from deeprebirth.nn.lrn import LocalResponseNorm2d

    check_backend(backend, per_channel)
    with quiet_import_logs():
        if backend == "xnnpack":
            module = import_optional(
                "executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch", PURPOSE
            )
            config = module.get_symmetric_quantization_config(
                is_per_channel=per_channel, is_qat=qat
            )
            quantizer = module.XNNPACKQuantizer().set_global(config)
            return quantizer.set_module_type(LocalResponseNorm2d, None)
        module = import_optional(
            "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "torchao", PURPOSE
        )
    config = module.get_default_x86_inductor_quantization_config(is_qat=qat)
    quantizer = module.X86InductorQuantizer().set_global(config)
    if graph_module is not None:
        for name in module_names_of_type(graph_module, LocalResponseNorm2d):
            quantizer.set_module_name_qconfig(name, None)
    return quantizer
