// The forward algorithm of branch_conv shared by the CPU and CUDA kernels; a backend supplies the
// GEMM that writes a 1x1 run into its channel slice.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ops/branch_conv/branch_conv.h"

namespace deeprebirth::ops {

// Writes relu?(x_rows @ weight2d^T + bias) into out_rows.
//   out_rows: (M, C) view of the output with one unit stride (pixel rows of a channels_last
//     output, or the transposed (C, H*W) channel slice of one NCHW image);
//   x_rows: (M, C_in) with one unit stride; weight2d: (C, C_in); bias: (C,) or nullopt.
using PointwiseGemmFn = void (*)(const at::Tensor& out_rows, const at::Tensor& x_rows,
                                 const at::Tensor& weight2d, const std::optional<at::Tensor>& bias,
                                 bool relu);

// dst = relu ? max(src, 0) : src, in one pass into dst's own strides (a channel slice of the
// output): any device.
void copy_relu_into(const at::Tensor& dst, const at::Tensor& src, bool relu);

// One ATen addmm_out/mm_out into out_rows, then an in-place ReLU: any device.
void pointwise_gemm_aten(const at::Tensor& out_rows, const at::Tensor& x_rows,
                         const at::Tensor& weight2d, const std::optional<at::Tensor>& bias,
                         bool relu);

// branch_conv's forward. Runs of consecutive branches with one window (kernel size and padding)
// are computed by one call over their concatenated weights: a single run is the whole output (one
// convolution, ReLU in place, no copy). With several runs the output is preallocated in
// branch_conv_output_format(x); a 1x1 stride-1 run over a channels_last input is a GEMM written
// straight into its channel slice by `gemm`, any other run one convolution whose result is copied
// into its slice with the ReLU applied on the way (one pass, where relu + cat take two).
// A 1x1 run whose concatenated weights would outweigh its output (C_in > N*H_out*W_out) is not
// merged: each branch is a GEMM from its own weight into its slice (in NCHW one per image), so no
// weight is copied; one whose weights exceed half its output (2*C_in > N*H_out*W_out) is merged
// but, over a channels_last input, computed as a GEMM, which does not repack the weights as the
// convolution does. Both keep the peak memory under the reference's (NCHW: see the .cpp).
// Smaller kernels are never embedded into a larger window: the zero taps cost more than the merge
// saves (docs/kernels.md, scripts/bench_branch_conv.py).
at::Tensor branch_conv_forward(const at::Tensor& x, at::TensorList weights,
                               const OptionalTensorList& biases, c10::IntArrayRef paddings,
                               int64_t stride, bool relu, PointwiseGemmFn gemm);

}  // namespace deeprebirth::ops
