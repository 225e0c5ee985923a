// The CPU epilogue of conv_pool: bias, ReLU and max/avg pooling of one channels-last convolution
// tile into rows of the output, in one pass over the tile while it is still in cache.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"

namespace deeprebirth::ops {

// Bytes of one convolution tile on the CPU: one 1 MB L2. Smaller tiles fit L2 with the input rows
// and weights, but each band costs an oneDNN call and a weight reorder (docs/kernels.md).
constexpr int64_t kCpuTileBytes = 1024 * 1024;

// Writes the pooled rows [band.p0, band.p1) of one image into `out_image` (C, out_h, out_w; any
// strides).
// Preconditions: `tile` is (1, C, rows, conv_w), channels-last contiguous, holding the convolution
// rows [tile_row0, tile_row0 + rows) without bias, and those rows include band.c0 .. band.c1;
// `bias` is undefined or a contiguous (C,) tensor; all share one dtype.
void bias_relu_pool_rows_cpu(const at::Tensor& tile, int64_t tile_row0, const at::Tensor& bias,
                             const RowBand& band, const ConvPoolGeometry& geometry,
                             const ConvPoolArgs& args, const at::Tensor& out_image);

// bias_relu_pool_rows_cpu over whole images: `images` (N, C, conv_h, conv_w), channels-last
// contiguous, pooled into `out` (N, C, out_h, out_w), in parallel over bands of a quarter of each
// image's pooled rows, so that both threads of a batch-1 call have rows to pool.
void bias_relu_pool_images_cpu(const at::Tensor& images, const at::Tensor& bias,
                               const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                               const at::Tensor& out);

}  // namespace deeprebirth::ops
