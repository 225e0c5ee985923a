// The backward of conv_pool by recomputation of the whole convolution (see
// conv_pool_backward_recompute in conv_pool.h): the CUDA backward; the CPU one recomputes by bands.
#include <ATen/ATen.h>

#include "ops/common/arg_checks.h"
#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"

namespace deeprebirth::ops {

ConvPoolGeometry check_conv_pool_grad_args(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& w, const std::optional<at::Tensor>& b,
                                           const ConvPoolArgs& args) {
  const ConvPoolGeometry geometry = check_conv_pool_args(x, w, b, args);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == w.size(0) &&
                  grad.size(2) == geometry.out_h && grad.size(3) == geometry.out_w,
              "conv_pool_backward: expected grad of shape [", x.size(0), ", ", w.size(0), ", ",
              geometry.out_h, ", ", geometry.out_w, "] (the output's), but got ", grad.sizes());
  check_same_dtype_and_device(grad, "grad", x, "x", "conv_pool_backward");
  return geometry;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_recompute(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
  const ConvPoolArgs args =
      make_conv_pool_args(stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                          pool_padding, ceil_mode, relu);
  check_conv_pool_grad_args(grad, x, w, b, args);
  const at::Tensor pre_activation = at::conv2d(x, w, b, stride, padding, dilation, groups);
  const at::Tensor activation = relu ? at::relu(pre_activation) : pre_activation;
  at::Tensor grad_activation;
  if (args.pool == PoolKind::Max) {
    const auto [pooled, indices] = at::max_pool2d_with_indices(activation, pool_kernel, pool_stride,
                                                               pool_padding, {1, 1}, ceil_mode);
    grad_activation = at::max_pool2d_with_indices_backward(
        grad, activation, pool_kernel, pool_stride, pool_padding, {1, 1}, ceil_mode, indices);
  } else {
    grad_activation =
        at::avg_pool2d_backward(grad, activation, pool_kernel, pool_stride, pool_padding, ceil_mode,
                                /*count_include_pad=*/true, std::nullopt);
  }
  const at::Tensor grad_conv =
      relu ? at::threshold_backward(grad_activation, activation, 0) : grad_activation;
  auto [grad_x, grad_w, grad_b] = at::convolution_backward(
      grad_conv, x, w, c10::IntArrayRef{w.size(0)}, stride, padding, dilation,
      /*transposed=*/false, {0, 0}, groups, {true, true, true});
  return {grad_x.contiguous(conv_pool_memory_format(x)),
          grad_w.contiguous(conv_pool_memory_format(w)), grad_b.contiguous()};
}

}  // namespace deeprebirth::ops
