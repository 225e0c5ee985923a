// CPU kernel of deeprebirth::branch_conv: the shared forward (branch_conv_forward.h) with its 1x1
// runs as a GEMM tiled over output pixels, each tile's bias + ReLU applied while the tile is still
// in cache; runs too small to tile (or with weights too large) as one float32 1x1 convolution
// (oneDNN) copied into the channel slice, other dtypes as one GEMM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/branch_conv/branch_conv.h"
#include "ops/branch_conv/branch_conv_forward.h"

namespace deeprebirth::ops {

namespace {

// Output rows per tile: enough to keep the GEMM efficient, few enough that a tile's output
// (rows x C floats) stays in L2 for the ReLU.
constexpr int64_t kTileRows = 256;
// Largest weight tiled over rows: a larger one is re-read from memory for every tile and runs
// slower tiled than as one GEMM (docs/kernels.md).
constexpr int64_t kTileWeightBytes = 256 * 1024;

// Multiply-accumulates below which a 1x1 run is one GEMM rather than a convolution: the
// convolution's fixed cost per call outweighs its faster arithmetic on the small networks' layers
// (a few hundred thousand multiply-accumulates).
constexpr int64_t kMinConvolutionMacs = 1 << 21;

// relu?(x_rows @ weight2d^T + bias) by ATen's 1x1 convolution (oneDNN for float32) over x_rows
// viewed as a one-pixel-high image, copied into out_rows with the ReLU applied on the way: the
// BLAS's GEMM fell behind the reference's convolutions on these short, weight-heavy shapes
// (batch-1 inception_4a-5b), and this runs at their speed.
void pointwise_convolution(const at::Tensor& out_rows, const at::Tensor& x_rows,
                           const at::Tensor& weight2d, const std::optional<at::Tensor>& bias,
                           bool relu) {
  // (1, C_in, 1, M) with the strides of the memory format x_rows has (pixel rows: channels-last;
  // the transposed plane of an NCHW image: contiguous), so that ATen picks that format. No copy.
  const int64_t rows = x_rows.size(0), in_channels = x_rows.size(1);
  const at::Tensor image = x_rows.as_strided(
      {1, in_channels, 1, rows},
      {rows * in_channels, x_rows.stride(1), rows * x_rows.stride(0), x_rows.stride(0)});
  const at::Tensor y = at::conv2d(image, weight2d.unsqueeze(2).unsqueeze(3), bias);
  copy_relu_into(out_rows, y.select(2, 0).select(0, 0).t(), relu);  // y as (M, C) rows
}

void pointwise_gemm_tiled(const at::Tensor& out_rows, const at::Tensor& x_rows,
                          const at::Tensor& weight2d, const std::optional<at::Tensor>& bias,
                          bool relu) {
  const int64_t rows = out_rows.size(0);
  const int64_t threads = at::get_num_threads();
  // Tiles re-read the weight once each: only worth it while the weight stays in L2.
  const bool small_weight = weight2d.numel() * weight2d.element_size() <= kTileWeightBytes;
  if (threads <= 1 || rows < 2 * kTileRows || !small_weight) {  // one call, threaded inside
    if (x_rows.scalar_type() == at::kFloat &&
        rows * x_rows.size(1) * weight2d.size(0) >= kMinConvolutionMacs) {
      pointwise_convolution(out_rows, x_rows, weight2d, bias, relu);
    } else {
      pointwise_gemm_aten(out_rows, x_rows, weight2d, bias, relu);
    }
    return;
  }
  const at::Tensor weight_t = weight2d.t().contiguous();  // (C_in, C) packed once for every tile
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t r0 = tile * kTileRows, len = std::min(kTileRows, rows - r0);
      at::Tensor out = out_rows.narrow(0, r0, len);
      const at::Tensor in = x_rows.narrow(0, r0, len);
      if (bias.has_value()) {
        at::addmm_out(out, *bias, in, weight_t);
      } else {
        at::mm_out(out, in, weight_t);
      }
      if (relu) out.clamp_min_(0);
    }
  });
}

at::Tensor branch_conv_cpu(const at::Tensor& x, at::TensorList weights,
                           const OptionalTensorList& biases, c10::IntArrayRef paddings,
                           int64_t stride, bool relu) {
  return branch_conv_forward(x, weights, biases, paddings, stride, relu, &pointwise_gemm_tiled);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) {
  m.impl("branch_conv", &branch_conv_cpu);
  m.impl("branch_conv_backward", &branch_conv_backward_aten);
}

}  // namespace deeprebirth::ops
