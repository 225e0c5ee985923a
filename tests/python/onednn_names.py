"""Profiler names of the packed path's oneDNN convolutions, for tests that check which kernel ran.

A packed layer runs oneDNN either as ATen's op on a packed weight
(``mkldnn::_convolution_pointwise``) or, where the library was built with oneDNN and the layer
reads and writes channels_last, as a primitive of its own (``deeprebirth::onednn_conv2d``).
Tests about the kernel choice (oneDNN against Winograd or the direct kernel) treat both as
oneDNN: :func:`as_onednn` names either one as ATen's op.
"""

from __future__ import annotations

OWN_TO_ATEN = {
    "deeprebirth::onednn_conv2d": "mkldnn::_convolution_pointwise",
    "deeprebirth::onednn_conv2d_add_": "mkldnn::_convolution_pointwise_",
}


def as_onednn(name: str) -> str:
    """``name``, with the library's own oneDNN operators named as ATen's."""
    return OWN_TO_ATEN.get(name, name)
