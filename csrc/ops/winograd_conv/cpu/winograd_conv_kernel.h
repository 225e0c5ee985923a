// CPU kernel of deeprebirth::winograd_conv2d, and what small_conv2d's packed path asks of it.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace deeprebirth::ops {

// Whether winograd_conv2d can compute conv2d(x, w) with these settings: float32 CPU tensors,
// WinogradConvolution::suits (3x3, stride 1, dilation 1, one group, C_in >= 8, C_out >= 16), x of
// rank 4 with w.size(1) channels.
bool winograd_conv_applies(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                           c10::IntArrayRef dilation, int64_t groups);

// winograd_pack(w, tile), or an undefined tensor when a value of w is not finite (see
// winograd_conv.h).
at::Tensor winograd_pack_if_finite(const at::Tensor& w, int64_t tile = 2);

// Whether every value of x is finite (one pass over x): winograd_conv2d's condition on its input.
bool winograd_input_finite(const at::Tensor& x);

// winograd_conv2d's CPU kernel on validated arguments, called directly (not through the
// dispatcher) where a caller times it.
at::Tensor winograd_conv2d_cpu(const at::Tensor& x, const at::Tensor& packed_w,
                               const std::optional<at::Tensor>& b, int64_t out_channels,
                               c10::IntArrayRef padding, bool relu);

// winograd_conv2d.out's CPU kernel (see winograd_conv.h).
at::Tensor& winograd_conv2d_out_cpu(const at::Tensor& x, const at::Tensor& packed_w,
                                    const std::optional<at::Tensor>& b, int64_t out_channels,
                                    c10::IntArrayRef padding, bool relu, at::Tensor& out);

}  // namespace deeprebirth::ops
