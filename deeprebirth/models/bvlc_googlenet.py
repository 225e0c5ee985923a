"""The original Caffe GoogLeNet (BVLC ``bvlc_googlenet``), the network DeepRebirth slims.

Read top to bottom: the Inception module, the stem blocks, the model, the factory.
Module names follow Caffe's layer names (``conv1``, ``conv2``, ``inception_3a`` …) so that plans
and reports read like the paper's tables. Differences from the Caffe prototxt: the final average
pooling is adaptive (any input size works) and the auxiliary classifiers are omitted (they are
training-only heads).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# (in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) of each Inception module, from Caffe.
INCEPTION_CONFIG: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}


INIT_SCHEMES = ("caffe", "kaiming")


def _lrn() -> nn.Module:
    """Caffe's LRN (local_size 5, alpha 1e-4, beta 0.75) as used by bvlc_googlenet.

    Portable exports hold :class:`deeprebirth.nn.LocalResponseNorm2d` in its place
    (the same sums by ``avg_pool2d``; PyTorch's ``avg_pool3d`` has no ExecuTorch kernel).
    """
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class Inception(nn.Module):
    """An Inception module: four branches over one input, concatenated along channels.

    Branches: ``conv_1x1``; ``conv_3x3_reduce -> conv_3x3``; ``conv_5x5_reduce -> conv_5x5``;
    ``pool (3x3/1 max) -> pool_proj``. Every convolution is followed by a ReLU.
    Any branch may be absent (its width 0), which is how slimmed modules are expressed.

    Shape:
        ``(N, in_channels, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.widths = (ch1x1, ch3x3_reduce, ch3x3, ch5x5_reduce, ch5x5, pool_proj)
        self.conv_1x1 = nn.Conv2d(in_channels, ch1x1, 1) if ch1x1 else None
        self.conv_3x3_reduce = nn.Conv2d(in_channels, ch3x3_reduce, 1) if ch3x3 else None
        self.conv_3x3 = nn.Conv2d(ch3x3_reduce, ch3x3, 3, padding=1) if ch3x3 else None
        self.conv_5x5_reduce = nn.Conv2d(in_channels, ch5x5_reduce, 1) if ch5x5 else None
        self.conv_5x5 = nn.Conv2d(ch5x5_reduce, ch5x5, 5, padding=2) if ch5x5 else None
        self.pool = nn.MaxPool2d(3, stride=1, padding=1) if pool_proj else None
        self.pool_proj = nn.Conv2d(in_channels, pool_proj, 1) if pool_proj else None
        self.relu = nn.ReLU(inplace=True)

    @property
    def out_channels(self) -> int:
        ch1x1, _, ch3x3, _, ch5x5, pool_proj = self.widths
        return ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        if self.conv_1x1 is not None:
            outputs.append(self.relu(self.conv_1x1(x)))
        if self.conv_3x3 is not None:
            outputs.append(self.relu(self.conv_3x3(self.relu(self.conv_3x3_reduce(x)))))
        if self.conv_5x5 is not None:
            outputs.append(self.relu(self.conv_5x5(self.relu(self.conv_5x5_reduce(x)))))
        if self.pool_proj is not None:
            outputs.append(self.relu(self.pool_proj(self.pool(x))))
        return torch.cat(outputs, 1)


def conv1_block(in_channels: int, out_channels: int, lrn: bool) -> nn.Sequential:
    """Caffe's conv1/7x7_s2 -> ReLU -> pool1/3x3_s2 -> pool1/norm1."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            norm=_lrn() if lrn else nn.Identity(),
        )
    )


def conv2_block(
    in_channels: int, reduce_channels: int, out_channels: int, lrn: bool
) -> nn.Sequential:
    """Caffe's conv2/3x3_reduce -> ReLU -> conv2/3x3 -> ReLU -> conv2/norm2 -> pool2/3x3_s2."""
    return nn.Sequential(
        OrderedDict(
            reduce=nn.Conv2d(in_channels, reduce_channels, 1),
            relu_reduce=nn.ReLU(inplace=True),
            conv=nn.Conv2d(reduce_channels, out_channels, 3, padding=1),
            relu=nn.ReLU(inplace=True),
            norm=_lrn() if lrn else nn.Identity(),
            pool=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
    )


class BVLCGoogLeNet(nn.Module):
    """Caffe's bvlc_googlenet as a flat sequence of named blocks (no BatchNorm).

    Top-level children, bottom to top: ``conv1``, ``conv2``, ``inception_3a``, ``inception_3b``,
    ``pool3``, ``inception_4a`` … ``inception_4e``, ``pool4``, ``inception_5a``, ``inception_5b``,
    ``avgpool``, ``dropout``, ``classifier``. Each block is one stage of layer-wise finetuning.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes)`` for any H, W >= 32.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        lrn: bool = True,
        in_channels: int = 3,
        init: str = "caffe",
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"expected width > 0, but got {width}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"init: expected one of {list(INIT_SCHEMES)}, but got {init!r}")

        def scaled(channels: int) -> int:
            return max(1, round(channels * width))

        self.width, self.num_classes = width, num_classes
        self.conv1 = conv1_block(in_channels, scaled(64), lrn)
        self.conv2 = conv2_block(scaled(64), scaled(64), scaled(192), lrn)
        channels = scaled(192)
        for name, config in INCEPTION_CONFIG.items():
            if name == "inception_4a":
                self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            if name == "inception_5a":
                self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            module = Inception(channels, *(scaled(c) for c in config[1:]))
            setattr(self, name, module)
            channels = module.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "caffe") -> None:
        """Initialises every layer: ``"caffe"`` is bvlc_googlenet's own (Xavier weights, constant
        0.2 conv biases); ``"kaiming"`` (He normal, fan-in, zero biases) trains a network without
        BatchNorm from scratch several times faster, e.g. a small teacher on Fashion-MNIST."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if init == "kaiming":
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)
                else:
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.constant_(module.bias, 0.2)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.named_children():
            x = module(x)
            if name == "avgpool":
                x = torch.flatten(x, 1)
        return x


def bvlc_googlenet(
    num_classes: int = 1000,
    width: float = 1.0,
    lrn: bool = True,
    in_channels: int = 3,
    init: str = "caffe",
) -> BVLCGoogLeNet:
    """Builds Caffe's bvlc_googlenet (3.17 GFLOP at 224x224, width 1).

    Args:
        num_classes: classifier outputs.
        width: channel multiplier for every layer (e.g. 0.25 for small-scale runs).
        lrn: keep the two LocalResponseNorm layers (False replaces them with Identity).
        in_channels: input image channels.
        init: ``"caffe"`` (the original's Xavier + 0.2 bias) or ``"kaiming"``; see
            :meth:`BVLCGoogLeNet.reset_parameters`.

    Example:
        >>> model = bvlc_googlenet(num_classes=10, width=0.25).eval()
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    from deeprebirth.models.recipe import set_recipe, source_recipe

    kwargs = {"width": width, "lrn": lrn, "in_channels": in_channels, "init": init}
    model = BVLCGoogLeNet(num_classes=num_classes, **kwargs)
    return set_recipe(model, source_recipe("bvlc_googlenet", num_classes, kwargs))
