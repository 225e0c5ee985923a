// Row-band tiling of conv_pool, shared by the CPU and CUDA kernels.
//
// A band is a range of pooled output rows [p0, p1). It needs the convolution rows [c0, c1) that
// its pooling windows touch (clipped to the convolution output), and those need the input rows
// [in0, in1) in padded coordinates (row r of the padded input is row r of x when 0 <= r < H, a
// zero row otherwise). Convolving exactly those input rows with zero vertical padding yields the
// band's convolution rows, so a kernel never holds more than one band of the pre-pool tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {

// One pooling window along one dimension, with ATen's avg_pool2d conventions: `padded_size` is
// the window length counted against the padded input (the count_include_pad divisor factor),
// [start, end) the part inside the input. Precondition: stride > 0, 0 <= padding <= kernel / 2,
// and `index` is a valid output index (then start < end).
struct PoolWindow {
  int64_t start, end, padded_size;
};

C10_HOST_DEVICE inline PoolWindow pool_window(int64_t index, int64_t in_size, int64_t kernel,
                                              int64_t stride, int64_t padding) {
  int64_t start = index * stride - padding;
  int64_t end = start + kernel;
  if (end > in_size + padding) end = in_size + padding;
  const int64_t padded_size = end - start;
  if (start < 0) start = 0;
  if (end > in_size) end = in_size;
  return {start, end, padded_size};
}

// One dimension of the pooling window: kernel, stride and padding.
struct PoolAxis {
  int64_t kernel, stride, padding;
};

// The pooling window along rows and along columns, as plain integers for the kernels.
struct PoolAxes {
  PoolAxis rows, cols;
};

inline PoolAxes pool_axes(const ConvPoolArgs& args) {
  return {{args.pool_kernel[0], args.pool_stride[0], args.pool_padding[0]},
          {args.pool_kernel[1], args.pool_stride[1], args.pool_padding[1]}};
}

C10_HOST_DEVICE inline PoolWindow pool_window(int64_t index, int64_t in_size,
                                              const PoolAxis& axis) {
  return pool_window(index, in_size, axis.kernel, axis.stride, axis.padding);
}

// Pooled rows [p0, p1), the convolution rows [c0, c1) they read and the padded input rows
// [in0, in1) those need.
struct RowBand {
  int64_t p0, p1;
  int64_t c0, c1;
  int64_t in0, in1;
};

// The band of pooled rows [p0, p1). Precondition: 0 <= p0 < p1 <= geometry.out_h and the
// arguments passed check_conv_pool_args.
RowBand row_band(int64_t p0, int64_t p1, const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                 int64_t kernel_h);

// The input rows of `band` for the images `x` (N, C, H, W): a view when the rows lie inside x,
// otherwise a copy with the zero rows of the vertical padding added. Convolving it with padding
// {0, args.padding[1]} gives the band's convolution rows c0..c1.
at::Tensor band_input(const at::Tensor& x, const RowBand& band);

// Pooled rows per band so that one band's convolution tile (all output channels, full width, one
// image) takes about `tile_bytes`; at least 1, at most out_h.
int64_t pooled_rows_per_band(const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                             int64_t out_channels, int64_t element_size, int64_t tile_bytes);

// The memory format of conv_pool's output (for t = x) and of the gradients of x and w (t = x, w):
// channels_last when t is channels_last (and not also plain contiguous), else contiguous.
// deeprebirth/ops/_fake.py states the same rule.
at::MemoryFormat conv_pool_memory_format(const at::Tensor& t);

}  // namespace deeprebirth::ops
