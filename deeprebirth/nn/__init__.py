"""The modules surgery rules put into models, one family per file.

Each module that runs something other than standard PyTorch layers (a deeprebirth operator, a
packed weight) defines ``to_standard() -> nn.Module``: the exactly equivalent module of standard
layers, which :func:`~deeprebirth.export.make_portable` puts in its place (as RepVGG's
``reparameterize()``: the block owns its deploy form). The forms those return, and
:class:`LocalResponseNorm2d`, are standard layers composed and define no ``to_standard``.

- :class:`ConvPool2d`: convolution -> [ReLU] -> pooling in one operator (``fuse_conv_pool``).
- :class:`BranchConv2d`: parallel convolutions over one input, concatenated, in one operator
  (``merge_branches``); :class:`ConcatBranches`: the same with standard convolutions
  (``branch_slim``, and ``BranchConv2d.to_standard()``).
- :class:`PackedConv2d`, :class:`PackedConvConcat`: convolutions on weights packed once
  (``pack_conv``, ``flatten_for_inference``); :class:`ConvConcat`: the standard form of the latter;
  :func:`freeze_packed_weights` for deployed models whose weights stay.
- :class:`PackedResidualBlock`, :class:`PackedResidualStage`: ResNet blocks and stages on packed
  convolutions (``pack_conv``); :class:`ResidualBlock`: the standard form of a block.
- :class:`LocalResponseNorm2d`: ``nn.LocalResponseNorm`` as every runtime runs it (export).
- :class:`InferenceMaxPool2d`: ``nn.MaxPool2d`` without the indices ATen's CPU kernel writes
  (``flatten_for_inference``).
- :class:`InferenceLinear`: ``nn.Linear`` with the output features split across the intra-op
  threads (the ``pack_conv`` rule).
- :class:`PlannedGraphModule` (``flatten_for_inference``'s result): a GraphModule whose inference
  forward, recorded once (:func:`record_op_plan`), runs again as one C++ call.

This package imports neither ``deeprebirth.surgery`` nor ``deeprebirth.export`` (they import it).
"""

from deeprebirth.nn.branch_conv import BranchConv2d, ConcatBranches
from deeprebirth.nn.conv_pool import ConvPool2d
from deeprebirth.nn.linear import InferenceLinear
from deeprebirth.nn.lrn import LocalResponseNorm2d
from deeprebirth.nn.max_pool import InferenceMaxPool2d
from deeprebirth.nn.op_plan import PlannedGraphModule, PlanRefused, record_op_plan
from deeprebirth.nn.packed_conv import (
    ConvConcat,
    PackedConv2d,
    PackedConvConcat,
    freeze_packed_weights,
)
from deeprebirth.nn.residual import PackedResidualBlock, PackedResidualStage, ResidualBlock

__all__ = [
    "BranchConv2d",
    "ConcatBranches",
    "ConvConcat",
    "ConvPool2d",
    "InferenceLinear",
    "InferenceMaxPool2d",
    "LocalResponseNorm2d",
    "PackedConv2d",
    "PackedConvConcat",
    "PackedResidualBlock",
    "PackedResidualStage",
    "PlanRefused",
    "PlannedGraphModule",
    "ResidualBlock",
    "freeze_packed_weights",
    "record_op_plan",
]
