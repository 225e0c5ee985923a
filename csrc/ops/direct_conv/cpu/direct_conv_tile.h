// The register tile of the CPU direct convolutions: deeprebirth::direct_conv's kernel and
// conv_pool's convolution of first layers (conv_pool/cpu/direct_band_convolution.h).
//
// A tile is R x P output pixels of `Blocks` blocks of 16 output channels, held in vector registers
// of `Width` float32 lanes while they accumulate input value x weight vector over (C_in, kh, kw).
// Each input value is loaded once for all the blocks, so more blocks mean fewer loads per
// multiply-add. The callers compile it once per instruction set (GCC / Clang `target` attributes
// on the functions it is inlined into) with as many accumulators as the registers hold.
#pragma once

#include <cstdint>

#include "ops/common/cpu_isa.h"
#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {

// What a tile reads: zero-bordered input planes and one packed block of the weight.
struct TileWindow {
  int64_t in_h, in_w;   // the input planes' size (padding included)
  const float* weight;  // the packed block, (C_in, kh, kw, 16) (direct_conv_pack)
  int64_t in_channels, kernel_h, kernel_w, stride_h, stride_w;
  int64_t block_step = 0;  // floats from one packed block to the next (tiles of several blocks)
};

// out[(r * P + p) * pixel_stride + 16 * k + l] = bias[16 * k + l] + sum over (c, i, j) of
//   input[c][r * stride_h + i][p * stride_w + j] * weight[k * block_step + ((c, i, j), l)]
// for the 16 lanes l of blocks k < Blocks, of the R x P output pixels whose top-left input is
// `input`, in vectors of `Width` lanes.
template <int Width, int R, int P, int Blocks = 1>
__attribute__((always_inline)) inline void tile(const TileWindow& t, const float* __restrict bias,
                                                const float* __restrict input,
                                                float* __restrict out, int64_t pixel_stride) {
  using Vec = typename Vector<Width>::type;
  constexpr int kVectors = Blocks * kDirectConvBlock / Width;  // per pixel
  constexpr int kBlockVectors = kDirectConvBlock / Width;
  Vec acc[R * P][kVectors];
  for (int v = 0; v < kVectors; ++v) {
    const Vec b = *reinterpret_cast<const Vec*>(bias + v * Width);
    for (int q = 0; q < R * P; ++q) acc[q][v] = b;
  }
  const float* __restrict w = t.weight;
  const int64_t channels = t.in_channels, kernel_h = t.kernel_h, kernel_w = t.kernel_w;
  const int64_t plane = t.in_h * t.in_w, in_w = t.in_w, stride = t.stride_w;
  const int64_t row_step = t.stride_h * in_w, block_step = t.block_step;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < kernel_h; ++i) {
      const float* __restrict row = input + c * plane + i * in_w;
      for (int64_t j = 0; j < kernel_w; ++j, w += kDirectConvBlock) {
        // The weight vectors first, then one input value at a time (live: the accumulators, the
        // weight vectors and one broadcast; broadcasting every input first spilled accumulators).
        Vec wv[kVectors];
#pragma GCC unroll 8
        for (int v = 0; v < kVectors; ++v) {
          wv[v] = *reinterpret_cast<const Vec*>(w + (v / kBlockVectors) * block_step +
                                                (v % kBlockVectors) * Width);
        }
#pragma GCC unroll 16
        for (int q = 0; q < R * P; ++q) {
          const float value = row[(q / P) * row_step + (q % P) * stride + j];
#pragma GCC unroll 8
          for (int v = 0; v < kVectors; ++v) acc[q][v] += value * wv[v];
        }
      }
    }
  }
  for (int q = 0; q < R * P; ++q) {
    for (int v = 0; v < kVectors; ++v)
      *reinterpret_cast<Vec*>(out + q * pixel_stride + v * Width) = acc[q][v];
  }
}

}  // namespace deeprebirth::ops
