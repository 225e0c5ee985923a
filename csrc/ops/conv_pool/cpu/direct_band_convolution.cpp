// Direct band convolution of conv_pool's CPU kernel (see direct_band_convolution.h).
#include "ops/conv_pool/cpu/direct_band_convolution.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "ops/common/env_switch.h"
#include "ops/conv_pool/cpu/padded_rows.h"
#include "ops/direct_conv/cpu/direct_conv_tile.h"
#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {
namespace {

constexpr int64_t kMaxInChannels = 4;

bool direct_enabled() {
  static const bool enabled = env_switch_on("DEEPREBIRTH_CONV_POOL_DIRECT");
  return enabled;
}

// The convolution rows of one band: `rows` rows of `out_w` pixels, every block of the weight.
struct BandRows : TileWindow {
  const float* input;  // the zero-bordered input rows, (C_in, in_h, in_w)
  int64_t rows, out_w, out_channels, blocks;
  float* out;  // (rows, out_w, out_channels)
};

// Pixels [first, end) of one output row of `Blocks` blocks, `lanes` of the last block's 16
// channels kept, in tiles of P pixels, then one tile of the rest.
template <int Width, int P, int Blocks>
__attribute__((always_inline)) inline void row_in_tiles(const TileWindow& window,
                                                        const float* input, int64_t first,
                                                        int64_t end, float* out,
                                                        int64_t pixel_stride, int64_t lanes) {
  static constexpr float kNoBias[Blocks * kDirectConvBlock] = {};
  constexpr int64_t kChannels = Blocks * kDirectConvBlock;
  const int64_t stride = window.stride_w;
  int64_t x = first;
  for (; x + P <= end; x += P) {
    if (lanes == kDirectConvBlock) {
      tile<Width, 1, P, Blocks>(window, kNoBias, input + x * stride, out + x * pixel_stride,
                                pixel_stride);
    } else {  // the last block of a C_out that is not a multiple of 16
      float part[P * kChannels];
      tile<Width, 1, P, Blocks>(window, kNoBias, input + x * stride, part, kChannels);
      for (int q = 0; q < P; ++q)
        std::copy_n(part + q * kChannels, kChannels - kDirectConvBlock + lanes,
                    out + (x + q) * pixel_stride);
    }
  }
  if constexpr (P > 1) {
    row_in_tiles<Width, P - 1, Blocks>(window, input, x, end, out, pixel_stride, lanes);
  }
}

// The band in tiles of P pixels by `Blocks` blocks while whole groups of blocks remain, then of
// SingleP pixels by one block.
template <int Width, int P, int Blocks, int SingleP>
__attribute__((always_inline)) inline void band_in_tiles(const BandRows& t) {
  const int64_t block_weights = t.in_channels * t.kernel_h * t.kernel_w * kDirectConvBlock;
  const int64_t row_elements = t.out_w * t.out_channels;
  TileWindow window = t;
  window.block_step = block_weights;
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* input = t.input + r * t.stride_h * t.in_w;
    float* out = t.out + r * row_elements;
    int64_t b = 0;
    for (; b + Blocks <= t.blocks; b += Blocks) {
      window.weight = t.weight + b * block_weights;
      const int64_t lanes =
          std::min(kDirectConvBlock, t.out_channels - (b + Blocks - 1) * kDirectConvBlock);
      row_in_tiles<Width, P, Blocks>(window, input, 0, t.out_w, out + b * kDirectConvBlock,
                                     t.out_channels, lanes);
    }
    for (; b < t.blocks; ++b) {
      window.weight = t.weight + b * block_weights;
      const int64_t lanes = std::min(kDirectConvBlock, t.out_channels - b * kDirectConvBlock);
      row_in_tiles<Width, SingleP, 1>(window, input, 0, t.out_w, out + b * kDirectConvBlock,
                                      t.out_channels, lanes);
    }
  }
}

using BandFunction = void (*)(const BandRows&);

// AVX-512: 6 pixels x 4 blocks (24 accumulators, 4 weight vectors: each input value loaded once
// for 64 channels), then 12 pixels x 1 block; AVX2: 6 pixels x 1 block (12 accumulators, 2 weight
// vectors); SSE2 2 pixels (its 4 weight vectors leave no room for 12); NEON has 32 registers.
// The per-ISA throughput of these tiles is in docs/kernels.md.
DEEPREBIRTH_CPU_VARIANTS(void, band, (const BandRows& t), (band_in_tiles<16, 6, 4, 12>(t)),
                         (band_in_tiles<8, 6, 1, 6>(t)), (band_in_tiles<4, 2, 1, 2>(t)),
                         (band_in_tiles<4, 6, 1, 6>(t)))

BandFunction band_function() {
  static const BandFunction function = band_for_cpu();
  return function;
}

}  // namespace

bool DirectBandConvolution::applies(const at::Tensor& w, const ConvPoolArgs& args) {
  return direct_enabled() && w.scalar_type() == at::kFloat && args.groups == 1 &&
         args.dilation[0] == 1 && args.dilation[1] == 1 && w.size(1) <= kMaxInChannels;
}

DirectBandConvolution::DirectBandConvolution(const at::Tensor& w, const ConvPoolArgs& args,
                                             int64_t conv_w)
    : packed_weight_(direct_conv_pack(w.detach())),
      out_channels_(w.size(0)),
      in_channels_(w.size(1)),
      kernel_h_(w.size(2)),
      kernel_w_(w.size(3)),
      stride_h_(args.stride[0]),
      stride_w_(args.stride[1]),
      padding_h_(args.padding[0]),
      padding_w_(args.padding[1]),
      conv_w_(conv_w) {}

void DirectBandConvolution::operator()(const at::Tensor& image, int64_t row0, int64_t row1,
                                       float* out, std::vector<float>& scratch) const {
  if (row1 <= row0) return;
  const int64_t in_h = (row1 - row0 - 1) * stride_h_ + kernel_h_;
  const int64_t in_w = image.size(2) + 2 * padding_w_;
  scratch.resize(in_channels_ * in_h * in_w);
  copy_padded_rows(image, row0 * stride_h_, in_h, padding_h_, padding_w_, in_w, scratch.data(),
                   {in_h * in_w, in_w, 1});
  BandRows band{};
  band.in_h = in_h;
  band.in_w = in_w;
  band.weight = packed_weight_.const_data_ptr<float>();
  band.in_channels = in_channels_;
  band.kernel_h = kernel_h_;
  band.kernel_w = kernel_w_;
  band.stride_h = stride_h_;
  band.stride_w = stride_w_;
  band.input = scratch.data();
  band.rows = row1 - row0;
  band.out_w = conv_w_;
  band.out_channels = out_channels_;
  band.blocks = packed_weight_.size(0);
  band.out = out;
  band_function()(band);
}

}  // namespace deeprebirth::ops
