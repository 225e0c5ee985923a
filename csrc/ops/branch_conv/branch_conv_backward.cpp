// The gradients of branch_conv (deeprebirth::branch_conv_backward), composed of ATen calls so the
// same code serves CPU and CUDA: one convolution_backward per same-window run.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>
#include <vector>

#include "ops/branch_conv/branch_conv.h"
#include "ops/branch_conv/branch_conv_plan.h"

namespace deeprebirth::ops {

BranchConvGrads branch_conv_backward_aten(const at::Tensor& grad_output, const at::Tensor& x,
                                          const at::Tensor& output, at::TensorList weights,
                                          c10::IntArrayRef paddings, int64_t stride, bool relu,
                                          std::array<bool, 3> output_mask) {
  OptionalTensorList no_biases;
  for (size_t i = 0; i < weights.size(); ++i) no_biases.push_back(std::nullopt);
  const BranchConvGeometry g = check_branch_conv_args(x, weights, no_biases, paddings, stride);
  const std::vector<int64_t> expected = {x.size(0), g.channel_offsets.back(), g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected),
              "branch_conv_backward: expected grad_output of shape ", c10::IntArrayRef(expected),
              ", but got ", grad_output.sizes());
  TORCH_CHECK(!relu || output.sizes() == grad_output.sizes(),
              "branch_conv_backward: expected output of shape ", grad_output.sizes(),
              " (needed for the ReLU), but got ", output.sizes());

  // d/dy of relu(y) is 1 where the output is positive (the same rule as ATen's relu backward).
  const at::Tensor grad = relu ? at::threshold_backward(grad_output, output, 0) : grad_output;
  const auto [need_x, need_w, need_b] = output_mask;

  at::Tensor grad_x;
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (const BranchRun& run : same_window_runs(weights, paddings, g)) {
    if (!need_x && !need_w) break;
    const at::Tensor grad_run = grad.narrow(1, run.channel_begin, run.channels());
    auto [gx, gw, unused_gb] = at::convolution_backward(
        grad_run, x, run_weight(weights, run), std::nullopt, {stride, stride},
        {run.padding, run.padding}, {1, 1}, false, {0, 0}, 1, {need_x, need_w, false});
    if (need_x) grad_x = grad_x.defined() ? grad_x.add_(gx) : gx;
    for (int64_t i = run.first; need_w && i < run.last; ++i) {
      const int64_t width = g.channel_offsets[i + 1] - g.channel_offsets[i];
      // Each gradient owns its storage (outputs of an op must not alias each other).
      grad_weights.push_back(run.last - run.first == 1
                                 ? gw.contiguous()
                                 : gw.narrow(0, g.channel_offsets[i] - run.channel_begin, width)
                                       .clone(at::MemoryFormat::Contiguous));
    }
  }
  if (need_x) grad_x = grad_x.contiguous(branch_conv_output_format(x));
  if (need_b) {
    const at::Tensor all = grad.sum({0, 2, 3});
    for (size_t i = 0; i < weights.size(); ++i) {
      grad_biases.push_back(
          all.narrow(0, g.channel_offsets[i], g.channel_offsets[i + 1] - g.channel_offsets[i])
              .clone());
    }
  }
  return {grad_x, grad_weights, grad_biases};
}

BranchConvGrads branch_conv_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                     const at::Tensor& output, at::TensorList weights,
                                     c10::IntArrayRef paddings, int64_t stride, bool relu,
                                     std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::branch_conv_backward", "")
                       .typed<decltype(branch_conv_backward)>();
  return op.call(grad_output, x, output, weights, paddings, stride, relu, output_mask);
}

}  // namespace deeprebirth::ops
