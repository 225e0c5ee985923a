// CUDA kernel of deeprebirth::branch_conv: the shared forward (branch_conv_forward.h) on the GPU.
// Same-window runs are one cuDNN convolution over concatenated weights; 1x1 runs over a
// channels_last input are one cuBLAS GEMM (ATen addmm_out) written straight into the output's
// channel slice. fp32/fp16/bf16 as far as ATen's CUDA convolution and GEMM support them.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "ops/branch_conv/branch_conv.h"
#include "ops/branch_conv/branch_conv_forward.h"

namespace deeprebirth::ops {

namespace {

at::Tensor branch_conv_cuda(const at::Tensor& x, at::TensorList weights,
                            const OptionalTensorList& biases, c10::IntArrayRef paddings,
                            int64_t stride, bool relu) {
  const c10::DeviceGuard device_guard(x.device());
  return branch_conv_forward(x, weights, biases, paddings, stride, relu, &pointwise_gemm_aten);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CUDA, m) {
  m.impl("branch_conv", &branch_conv_cuda);
  m.impl("branch_conv_backward", &branch_conv_backward_aten);
}

}  // namespace deeprebirth::ops
