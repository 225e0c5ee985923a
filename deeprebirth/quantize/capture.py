"""The graph a PT2E quantizer annotates: the portable model captured by ``torch.export``.

The model is made portable first (:func:`~deeprebirth.export.portable.make_portable`: ConvPool2d,
BranchConv2d, the packed convolutions become the standard layers they compute, exactly), so the
quantizers see the convolutions, pools and concatenations they know; a ``torch.ops.deeprebirth``
call left is decomposed into standard operators. The batch dimension stays dynamic, so the
calibration set runs in batches of any size.
"""

from __future__ import annotations

import logging
import re
import warnings

import torch
from torch import fx, nn

from deeprebirth.export.portable import decompose_deeprebirth_ops, make_portable
from deeprebirth.export.pt2 import export_program
from deeprebirth.quantize.backends import QuantizeError

_REPEATED_CALL = re.compile(r"@(\d+)$")


def separate_repeated_module_calls(graph_module: fx.GraphModule) -> int:
    """Gives each call of a module called more than once its own name in the nodes'
    ``nn_module_stack`` (``relu`` -> ``relu@1`` for the second call); returns how many nodes
    changed.

    Quantizers group nodes into "partitions" by the innermost module's name: all calls of one
    shared module (the ReLU of an inception block that surgery rebuilt, torchvision's
    ``BasicBlock.relu``) would form one partition with several outputs, which torchao's
    ``X86InductorQuantizer`` refuses ("Input partition has more than one output node").
    ``torch.export`` already tells the calls apart in the stack's keys (``...relu@1``); this
    copies that suffix into the name. Only metadata changes: the computation is untouched.
    """
    changed = 0
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (name, kind) = next(reversed(stack.items()))
        match = _REPEATED_CALL.search(key)
        if match and not name.endswith(match.group(0)):
            stack[key] = (f"{name}{match.group(0)}", kind)
            changed += 1
    return changed


def capture_for_quantization(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """The ``torch.export`` graph of the portable ``model`` (eval mode, dynamic batch), ready
    for ``prepare_pt2e``.

    Args:
        model: any module (not modified); deeprebirth's modules are replaced by standard layers.
        example_input: ``(N, C, H, W)``; C, H and W are fixed in the graph.

    Raises:
        QuantizeError: ``torch.export`` cannot capture the model at that input (data-dependent
            control flow, an input too small for its pools …): the message names the model
            and the first line of the failure.

    Example:
        >>> gm = capture_for_quantization(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))
        >>> sum(n.target == torch.ops.aten.conv2d.default for n in gm.graph.nodes)
        1
    """
    if example_input.dim() != 4:
        raise QuantizeError(
            f"expected an example input (N, C, H, W), but got shape {list(example_input.shape)}"
        )
    portable = make_portable(model).eval()
    # A failing shape check is logged with its whole traceback by the fake-tensor layer before it
    # raises; the error below says it in one line.
    fake_tensor_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_tensor_log.level
    fake_tensor_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree note
            program = decompose_deeprebirth_ops(export_program(portable, example_input))
    except Exception as error:  # torch.export raises many types (UserError, RuntimeError …)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = lines[0][:300] if lines else ""
        raise QuantizeError(
            f"{type(model).__name__} cannot be exported by torch.export at input "
            f"{list(example_input.shape)}, so it cannot be quantized: "
            f"{type(error).__name__}: {first}"
        ) from error
    finally:
        fake_tensor_log.setLevel(level)
    graph_module = program.module()
    separate_repeated_module_calls(graph_module)
    return graph_module
