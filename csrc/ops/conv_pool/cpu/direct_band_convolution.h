// The convolution of conv_pool's row bands on the CPU for layers with few input channels: the
// first layer of a network (GoogLeNet conv1, the ResNet stem: RGB input, 7x7, stride 2).
//
// oneDNN convolves such layers as fast as the cores allow, but each call costs a setup and a
// weight reorder, which row bands multiply. Here direct_conv's register tiles (direct_conv_tile.h)
// compute each row of 16-channel blocks straight from zero-bordered copies of the few input rows a
// band needs, which stay in L1 with the block's weights; the tile keeps every multiply-add unit
// busy (AVX2: 6 pixels x 16 channels in 12 accumulators; AVX-512: 6 pixels x 64 channels in 24), as
// fast as oneDNN per core (docs/kernels.md). The rows are written channels-last, the layout of
// conv_pool's epilogue.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {

class DirectBandConvolution {
 public:
  // Convolution-output bytes of one band of conv_pool's thread-band schedule: the tile stays in a
  // 512 KiB L2 beside the input rows and weights while it is pooled.
  static constexpr int64_t kBandTileBytes = 256 * 1024;

  // Whether conv_pool's CPU kernel convolves with w (and x of w's dtype) this way: float32, one
  // group, dilation 1 and at most 4 input channels (grey, RGB or RGBA images); not when
  // DEEPREBIRTH_CONV_POOL_DIRECT=0 was set when the library loaded.
  static bool applies(const at::Tensor& w, const ConvPoolArgs& args);

  // Packs w (C_out, C_in, kh, kw; any layout) for convolutions with the stride and padding of
  // `args` whose output is `conv_w` columns wide.
  DirectBandConvolution(const at::Tensor& w, const ConvPoolArgs& args, int64_t conv_w);

  // Writes the convolution rows [row0, row1) of `image` (C_in, H, W; float32, any strides),
  // without bias, to `out` as (row1 - row0, conv_w, C_out) contiguous. `scratch` holds the
  // zero-bordered input rows (one buffer per thread; grown as needed).
  void operator()(const at::Tensor& image, int64_t row0, int64_t row1, float* out,
                  std::vector<float>& scratch) const;

 private:
  at::Tensor packed_weight_;  // direct_conv_pack(w): (blocks, C_in, kh, kw, 16)
  int64_t out_channels_, in_channels_, kernel_h_, kernel_w_;
  int64_t stride_h_, stride_w_, padding_h_, padding_w_, conv_w_;
};

}  // namespace deeprebirth::ops
