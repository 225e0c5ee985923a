"""When a module should show inductor standard operators instead of deeprebirth's."""

from __future__ import annotations

import torch


def compiling_for_inductor() -> bool:
    """True while ``torch.compile`` (not ``torch.export``) traces the calling forward.

    Inductor cannot look inside a deeprebirth operator: it runs it as an opaque call, cannot fuse
    the ReLU or the pooling around it, and converts layouts at its boundaries. Given the same
    layers as standard operators it compiles them like the portable model, so the modules that
    call deeprebirth's operators give it those (the exact same arithmetic, see
    ``deeprebirth.ops._reference``). ``torch.export`` keeps the operators: its programs are what
    ``format="pt2"`` ships, and the ExecuTorch/ONNX exporters decompose them on purpose.
    """
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()
