"""deeprebirth's operators: Python wrappers; their ``nn.Module`` forms live in ``deeprebirth.nn``.

- :func:`conv_pool`: convolution -> [ReLU] -> max/avg pooling, fused (module: ``ConvPool2d``).
- :func:`branch_conv`: parallel convolutions over one input, concatenated (``BranchConv2d``).
- :func:`direct_conv` / :func:`small_conv2d` / :func:`small_conv2d_cat`: small layers computed
  directly on a packed weight (:func:`direct_conv_pack`); ``PackedConv2d`` runs them
  (:func:`small_conv2d_add_`: a residual block's last layer added into its shortcut's output);
  :func:`direct_conv_isa` names the kernel's instruction set.
- :func:`winograd_conv2d`: 3x3 stride-1 layers by Winograd F(2x2, 3x3) or F(4x4, 3x3) on a
  weight transformed once (:func:`winograd_pack`); ``small_conv2d`` runs it on frozen weights
  where it is faster.
- :func:`max_pool2d`: max pooling without the indices ATen's CPU kernel writes
  (``InferenceMaxPool2d``).
- :func:`linear`: ``torch.nn.functional.linear`` with the output features split across the
  intra-op threads (``InferenceLinear``).
- :func:`onednn_conv2d` / :func:`onednn_conv2d_add_`: oneDNN convolutions on frozen weights, one
  primitive kept per layer (what ``small_conv2d`` runs for its oneDNN layers).

``deeprebirth.ops.ConvPool2d`` and ``deeprebirth.ops.BranchConv2d`` still name the modules.
"""

from deeprebirth.ops import (
    _fake,  # noqa: F401  (registers fake implementations)
    _flops,  # noqa: F401  (registers FLOP formulas)
)
from deeprebirth.ops._library import build_info, load_extension
from deeprebirth.ops.branch_conv import branch_conv
from deeprebirth.ops.conv_pool import conv_pool
from deeprebirth.ops.direct_conv import (
    direct_conv,
    direct_conv_isa,
    direct_conv_pack,
    small_conv2d,
    small_conv2d_add_,
    small_conv2d_cat,
)
from deeprebirth.ops.linear import linear
from deeprebirth.ops.max_pool import max_pool2d
from deeprebirth.ops.onednn_conv import onednn_conv2d, onednn_conv2d_add_
from deeprebirth.ops.winograd_conv import winograd_conv2d, winograd_pack

__all__ = [
    "BranchConv2d",
    "ConvPool2d",
    "branch_conv",
    "build_info",
    "conv_pool",
    "direct_conv",
    "direct_conv_isa",
    "direct_conv_pack",
    "linear",
    "load_extension",
    "max_pool2d",
    "onednn_conv2d",
    "onednn_conv2d_add_",
    "small_conv2d",
    "small_conv2d_add_",
    "small_conv2d_cat",
    "winograd_conv2d",
    "winograd_pack",
]


def __getattr__(name: str):
    # The modules, read lazily: deeprebirth.nn imports this package.
    if name in ("BranchConv2d", "ConvPool2d"):
        import deeprebirth.nn

        return getattr(deeprebirth.nn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
