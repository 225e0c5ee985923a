"""Fake (meta) implementations of the deeprebirth operators for torch.compile and torch.export.

A fake implementation only produces an output of the right shape, dtype, device and strides. Each
one runs the operator's reference composition (deeprebirth.ops._reference) on the fake inputs,
so the output metadata is exactly what the ATen sequence would produce and no size arithmetic is
restated here. The C++ library names this module (``set_python_module``), so PyTorch imports it
whenever it needs a fake implementation.
"""

from __future__ import annotations

import torch

from deeprebirth.ops import _library, _reference

_library.load_extension()


@torch.library.register_fake("deeprebirth::conv_pool")
def _conv_pool_fake(
    x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride, pool_padding,
    ceil_mode, relu,
):  # fmt: skip
    out = _reference.conv_pool_reference(
        x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride, pool_padding,
        ceil_mode, relu,
    )  # fmt: skip
    return out.contiguous(memory_format=_reference.conv_pool_memory_format(x))


@torch.library.register_fake("deeprebirth::conv_pool_backward")
def _conv_pool_backward_fake(
    grad, x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
    pool_padding, ceil_mode, relu,
):  # fmt: skip
    def like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(
            t.shape, dtype=t.dtype, device=t.device,
            memory_format=_reference.conv_pool_memory_format(t),
        )  # fmt: skip

    return like(x), like(w), w.new_empty(w.shape[0])


@torch.library.register_fake("deeprebirth::branch_conv")
def _branch_conv_fake(x, weights, biases, paddings, stride, relu):
    out = _reference.branch_conv_reference(x, weights, biases, paddings, stride, relu)
    # The kernels lay the output out by branch_conv_output_format (branch_conv_plan.h).
    return out.contiguous(memory_format=_reference.branch_conv_output_format(x))


@torch.library.register_fake("deeprebirth::branch_conv_backward")
def _branch_conv_backward_fake(
    grad_output, x, output, weights, paddings, stride, relu, output_mask
):
    need_x, need_w, need_b = output_mask
    grad_x = (
        torch.empty_like(x, memory_format=_reference.branch_conv_output_format(x))
        if need_x
        else None
    )
    grad_weights = (
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
        if need_w
        else []
    )
    grad_biases = [grad_output.new_empty((w.shape[0],)) for w in weights] if need_b else []
    return grad_x, grad_weights, grad_biases


@torch.library.register_fake("deeprebirth::direct_conv")
def _direct_conv_fake(x, packed_w, b, out_channels, stride, padding, relu):
    # conv2d with an (out_channels, C_in, kh, kw) weight gives the output's sizes.
    w = packed_w.new_empty((out_channels, *packed_w.shape[1:4]))
    return torch.nn.functional.conv2d(x, w, b, stride, padding).contiguous()


@torch.library.register_fake("deeprebirth::direct_conv_cat")
def _direct_conv_cat_fake(xs, packed_ws, bs, out_channels, strides, paddings, relu):
    outs = [
        _direct_conv_fake(x, w, b, c, strides[2 * i : 2 * i + 2], paddings[2 * i : 2 * i + 2], relu)
        for i, (x, w, b, c) in enumerate(zip(xs, packed_ws, bs, out_channels, strict=True))
    ]
    return torch.cat(outs, 1)


@torch.library.register_fake("deeprebirth::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode):
    return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, 1, ceil_mode)


@torch.library.register_fake("deeprebirth::winograd_pack")
def _winograd_pack_fake(w, tile=2):
    return w.new_empty(((tile + 2) ** 2, -(-w.shape[0] // 16), w.shape[1], 16))


@torch.library.register_fake("deeprebirth::winograd_conv2d")
def _winograd_conv2d_fake(x, packed_w, b, out_channels, padding, relu):
    w = packed_w.new_empty((out_channels, x.shape[1], 3, 3))
    return torch.nn.functional.conv2d(x, w, b, 1, padding)


@torch.library.register_fake("deeprebirth::winograd_conv2d.out")
def _winograd_conv2d_out_fake(x, packed_w, b, out_channels, padding, relu, *, out):
    return out


@torch.library.register_fake("deeprebirth::linear")
def _linear_fake(x, w, b):
    return torch.nn.functional.linear(x, w, b).contiguous()


@torch.library.register_fake("deeprebirth::onednn_conv2d")
def _onednn_conv2d_fake(x, w, b, stride, padding, dilation, groups, relu):
    y = torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups)
    return y.contiguous(memory_format=torch.channels_last)  # as oneDNN writes it


@torch.library.register_fake("deeprebirth::onednn_conv2d.out")
def _onednn_conv2d_out_fake(x, w, b, stride, padding, dilation, groups, relu, *, out):
    return out


@torch.library.register_fake("deeprebirth::onednn_conv2d_add_")
def _onednn_conv2d_add_fake(residual, x, w, b, stride, padding, dilation, groups, relu):
    return residual
