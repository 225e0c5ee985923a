// deeprebirth::conv_pool — pool(relu?(conv2d(x, w, b))) as one operator.
//
// Schema (registered in conv_pool.cpp):
//   conv_pool(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation,
//             int groups, str pool, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding,
//             bool ceil_mode, bool relu) -> Tensor
//   conv_pool_backward(Tensor grad, <the arguments of conv_pool>) -> (Tensor, Tensor, Tensor)
// pool is "max" or "avg"; average pooling counts padded cells (count_include_pad=True), as
// torch.nn.AvgPool2d does by default.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace deeprebirth::ops {

enum class PoolKind { Max, Avg };

// Parses the schema's `pool` string; raises naming the argument for anything but "max"/"avg".
PoolKind parse_pool_kind(c10::string_view pool);

// The non-tensor arguments of conv_pool, in schema order.
struct ConvPoolArgs {
  c10::IntArrayRef stride, padding, dilation;
  int64_t groups;
  PoolKind pool;
  c10::IntArrayRef pool_kernel, pool_stride, pool_padding;
  bool ceil_mode;
  bool relu;
};

// ConvPoolArgs from the operator's arguments in schema order (pool by name: "max" or "avg"), the
// one place the kernels turn their dispatcher arguments into ConvPoolArgs.
ConvPoolArgs make_conv_pool_args(c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t groups, c10::string_view pool,
                                 c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride,
                                 c10::IntArrayRef pool_padding, bool ceil_mode, bool relu);

// Sizes implied by validated arguments.
struct ConvPoolGeometry {
  int64_t conv_h, conv_w;  // convolution (pre-pool) output
  int64_t out_h, out_w;    // pooled output
};

// Validates every argument (ranks, dtypes, devices, channel counts of at least one, positive
// strides, non-empty kernels that fit the padded input, pool padding <= half the pool kernel,
// non-empty output) and returns the sizes. Every kernel and the reference call this first.
ConvPoolGeometry check_conv_pool_args(const at::Tensor& x, const at::Tensor& w,
                                      const std::optional<at::Tensor>& b, const ConvPoolArgs& args);

// The unfused composite of ATen calls (conv2d -> relu -> max/avg pool): the reference.
at::Tensor conv_pool_reference(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, const ConvPoolArgs& args);

// The gradients (grad_x, grad_w, grad_b) of conv_pool given the output gradient `grad`. Recomputes
// the convolution from x, w, b (nothing of the forward pass is saved but its inputs), then runs
// ATen's pooling, ReLU and convolution backward. grad_x and grad_w have the memory formats
// conv_pool_memory_format(x) and (w) (conv_pool_tiling.h), grad_b is (C_out,) even when b is
// absent. Device agnostic (ATen calls only): the CPU and CUDA kernels of conv_pool_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_recompute(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu);

// check_conv_pool_args, and requires `grad` to have the output's shape (N, C_out, out_h, out_w)
// and x's dtype and device.
ConvPoolGeometry check_conv_pool_grad_args(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& w, const std::optional<at::Tensor>& b,
                                           const ConvPoolArgs& args);

// Calls deeprebirth::conv_pool_backward through the dispatcher.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu);

// Calls deeprebirth::conv_pool through the dispatcher (so autograd and every backend apply).
at::Tensor conv_pool(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                     int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
                     c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode,
                     bool relu);

}  // namespace deeprebirth::ops
