// Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution of row bands on the CPU (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", CVPR 2016): conv_pool's bands (F(2x2)) and
// winograd_conv2d's images (either).
//
// A 3x3, stride-1 convolution computes each 2x2 block of output pixels from a 4x4 patch of input
// with 16 multiplications per (input, output channel) pair instead of 36: the patch is
// transformed (V = B^T d B, additions only), multiplied element-wise by the transformed weight
// (U = G g G^T, once per call or pass) and summed over input channels, which for a group of
// patches is 16 matrix products (one per element of the 4x4 transform, (tiles x C_in) x
// (C_in x C_out)), and transformed back (Y = A^T M A, additions only). 2.25x fewer multiply-adds
// than a direct convolution; float32 results agree with at::conv2d to about 1e-6 of the output's
// magnitude (only additions and multiplications by 1/2 are added). The products run in
// direct_conv's register tiles (AVX-512: 6 patches x 64 channels), each tile's 16 products
// transformed back while in L1, over chunks of 128 KiB of V (48 patches or more), in turn on the
// calling thread: the products never leave L1, which a batched matrix product over chunks could
// not do fast enough to beat oneDNN's direct convolution (docs/kernels.md).
//
// F(4x4, 3x3) is the same with 6x6 patches, 4x4 output blocks and 36 products: 4x fewer
// multiply-adds than a direct convolution (1.78x fewer than F(2x2) on whole blocks), on a
// transformed weight 36/9 of the weight's size; its transforms multiply by up to 8 and divide by
// up to 24, so results agree with at::conv2d to about 2e-5 of the output's magnitude.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {

class WinogradConvolution {
 public:
  // Convolution-output bytes of one band of conv_pool's thread-band schedule: smaller than
  // DirectBandConvolution's, since the transformed weight already takes most of the call's memory
  // (GoogLeNet conv2: one pooled row, 3 convolution rows, 129 KB).
  static constexpr int64_t kBandTileBytes = 128 * 1024;

  // Whether this algorithm suits a convolution by w (C_out, C_in, kh, kw) with these settings:
  // float32, a 3x3 kernel, stride 1, dilation 1, one group and enough channels (C_in >= 8,
  // C_out >= 16) for the matrix products to outweigh the transforms. Every user's condition.
  static bool suits(const at::Tensor& w, c10::IntArrayRef stride, c10::IntArrayRef dilation,
                    int64_t groups);

  // Whether conv_pool's CPU kernel convolves with w (and x of w's dtype) this way: `suits`, and
  // not when DEEPREBIRTH_CONV_POOL_WINOGRAD=0 was set when the library loaded.
  static bool applies(const at::Tensor& w, const ConvPoolArgs& args);

  // Whether every value of x and w (float32, any strides) is finite, which conv_pool requires of
  // this convolution (and convolves with oneDNN otherwise): its transforms add and subtract
  // inputs (and weights), so one infinity would reach every output of its 2x2 block and
  // inf - inf would give NaN where ATen's sums give an infinity. With finite inputs an output is
  // non-finite only by overflow. One pass over x, a small fraction of the convolution's work.
  static bool exact_for(const at::Tensor& x, const at::Tensor& w);

  // Whether every value of t (float32, any strides) is finite: the condition above for one tensor.
  static bool finite(const at::Tensor& t);

  // Output channels to convolve per pass over the input (a multiple of 16): all of w's (C_out)
  // unless their transformed weight (16 C_in C_out floats) exceeds both kPassWeightBytes and an
  // eighth of the call's convolution output (`conv_output_bytes`), then equal groups of them.
  // Each pass transforms the input again (a few percent of the convolution) but holds a third or
  // less of the weight: GoogLeNet conv2 at batch 1, whose 786 KB transformed weight is a third of
  // the pre-pool tensor the fusion saves, runs three passes of 64 channels.
  static int64_t channels_per_pass(const at::Tensor& w, int64_t conv_output_bytes);
  static constexpr int64_t kPassWeightBytes = 256 * 1024;

  // U = G w G^T: the weight w (C_out, C_in, 3, 3; float32, any layout) transformed, in parallel,
  // for output tiles of `tile` x `tile` pixels (F(2x2, 3x3) or F(4x4, 3x3); any other tile is an
  // error), as (16 or 36, ceil(C_out / 16), C_in, 16). A caller whose weight stays can keep it
  // across calls.
  static at::Tensor transform(const at::Tensor& w, int64_t tile = 2);

  // The output tile (2 or 4) a weight transformed by `transform` was made for (from its shape).
  static int64_t tile_of(const at::Tensor& transformed_weight);

  // Transforms the weight w (C_out, C_in, 3, 3; any layout; in parallel) for convolutions with
  // the padding of `args` whose output is `conv_w` columns wide.
  WinogradConvolution(const at::Tensor& w, const ConvPoolArgs& args, int64_t conv_w);

  // The same from a weight already transformed (`transform`, either tile) with C_out output
  // channels, for convolutions padded by (padding_h, padding_w).
  WinogradConvolution(const at::Tensor& transformed_weight, int64_t out_channels, int64_t padding_h,
                      int64_t padding_w, int64_t conv_w);

  // Writes the convolution rows [row0, row1) of `image` (C_in, H, W; float32, any strides) to
  // `out` as (row1 - row0, conv_w, C_out), channels contiguous and pixels `out_pixel_stride`
  // floats apart (C_out when 0; more for a channel slice of a wider channels-last tensor):
  // without bias, or relu?(conv + bias) when `bias` (C_out floats) is given, added as each tile
  // is written. `scratch` holds one chunk's input rows and transforms (one buffer per thread;
  // grown as needed). Only the output channels of blocks [first_block, end_block) (16 channels a
  // block; end_block -1: to the last) are computed and written; the others are left as they are.
  // Likewise only the output tiles [first_tile, end_tile) of the rows (row-major, tile() x tile()
  // pixels each; end_tile -1: to the last), so that threads can share an image's tiles evenly
  // where its rows of tiles do not divide between them (7 rows of 4x4 tiles at 28x28).
  void operator()(const at::Tensor& image, int64_t row0, int64_t row1, float* out,
                  std::vector<float>& scratch, const float* bias = nullptr, bool relu = false,
                  int64_t out_pixel_stride = 0, int64_t first_block = 0, int64_t end_block = -1,
                  int64_t first_tile = 0, int64_t end_tile = -1) const;

  // M of F(M x M, 3x3): the output tile's side, 2 or 4.
  int64_t tile() const { return tile_of(transformed_weight_); }

  // The number of 16-channel output blocks (the unit of first_block and end_block).
  int64_t blocks() const { return transformed_weight_.size(1); }

  // The output blocks (patches) of one chunk of transformed input, the unit in which a call reads
  // the whole transformed weight once: 128 KiB of transformed patches, and at least 48 (for whole
  // patch rows, a row's patches are the most).
  int64_t tiles_per_chunk() const;

 private:
  // U: (A * A, blocks, C_in, 16), element (i, j) at A * i + j; A = tile() + 2
  at::Tensor transformed_weight_;
  int64_t in_channels_, out_channels_, padding_h_, padding_w_, conv_w_;
};

}  // namespace deeprebirth::ops
