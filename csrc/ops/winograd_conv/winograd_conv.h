// deeprebirth::winograd_conv2d — relu?(conv2d(x, w, b)) of a 3x3, stride-1 layer by Winograd
// F(2x2, 3x3) or F(4x4, 3x3) on a weight transformed once by winograd_pack (the kernel:
// ops/conv_pool/cpu/winograd_convolution.h).
//
// Schema (registered in winograd_conv.cpp):
//   winograd_pack(Tensor w, int tile=2) -> Tensor   (tile 2: F(2x2, 3x3); 4: F(4x4, 3x3))
//   winograd_conv2d(Tensor x, Tensor packed_w, Tensor? b, int out_channels, int[2] padding,
//                   bool relu) -> Tensor
//   winograd_conv2d.out(..., *, Tensor(a!) out) -> Tensor(a!)   (written into a channels_last out
//                   or a channel slice of one: a concatenation's part, no torch.cat)
// 2.25x (F(2x2)) or 4x (F(4x4)) fewer multiply-adds than a direct convolution; float32 on the
// CPU, ungrouped, undilated, inference only (no gradient). small_conv2d runs it on frozen weights
// where it measures faster than oneDNN (ops/direct_conv/cpu/onednn_packed_conv.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace deeprebirth::ops {

// The weight w (C_out, C_in, 3, 3; float32 CPU, finite) transformed as winograd_conv2d reads it,
// for F(tile x tile, 3x3) (tile 2 or 4): (16 or 36, ceil(C_out / 16), C_in, 16), the lanes past
// C_out zero.
at::Tensor winograd_pack(const at::Tensor& w, int64_t tile = 2);

// Validates every argument (x 4-D float32 CPU with C_in channels, packed_w = winograd_pack of a
// (out_channels, C_in, 3, 3) weight for either tile, b of out_channels values, non-negative
// padding, an output of at least one pixel) and returns the output's (H, W).
std::pair<int64_t, int64_t> check_winograd_conv2d_args(const at::Tensor& x,
                                                       const at::Tensor& packed_w,
                                                       const std::optional<at::Tensor>& b,
                                                       int64_t out_channels,
                                                       c10::IntArrayRef padding);

// relu?(conv2d(x, w, b, stride 1, padding)) from packed_w = winograd_pack(w, tile), in x's memory
// format (channels_last for a channels_last x, else contiguous NCHW), within about 1e-6 (F(2x2))
// or 2e-5 (F(4x4)) of the output's magnitude of conv2d's. x must be finite: the transforms add and
// subtract inputs, so an infinity or NaN reaches its whole block of outputs (conv2d gives it to
// some of them).
at::Tensor winograd_conv2d(const at::Tensor& x, const at::Tensor& packed_w,
                           const std::optional<at::Tensor>& b, int64_t out_channels,
                           c10::IntArrayRef padding, bool relu);

// The same written into `out`, shaped like the output, channels innermost with pixels and rows
// evenly apart: channels_last, or a channel slice (narrow) of a channels_last tensor.
at::Tensor& winograd_conv2d_out(const at::Tensor& x, const at::Tensor& packed_w,
                                const std::optional<at::Tensor>& b, int64_t out_channels,
                                c10::IntArrayRef padding, bool relu, at::Tensor& out);

// Validates winograd_conv2d.out's `out` for x and the output's (H, W) `size`.
void check_winograd_out(const at::Tensor& out, const at::Tensor& x, int64_t out_channels,
                        std::pair<int64_t, int64_t> size);

}  // namespace deeprebirth::ops
