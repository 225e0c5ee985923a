// Winograd F(M x M, 3x3) band convolution, M = 2 or 4 (see winograd_convolution.h). A = M + 2 is
// the patch's side, A * A the elements of the transform (16 or 36).
//
// Layouts (all channels innermost, so every transform loop runs over contiguous channels):
//   chunk input   (M * patch rows + 2, M * tile_cols + 2, C_in): zero border and tail
//   V             (A * A, tiles, C_in)          transformed patches of one chunk
//   U             (A * A, blocks, C_in, 16)     transformed weight, 16 output channels a block
//   M = V U       (A * A, P, Blocks * 16)       one register tile's products, on the stack
//   output rows   (rows, cols, C_out)
// The products run in direct_conv's register tiles (a 1x1 convolution of V's patches by U's
// blocks, one per element of the transform), and each tile's A * A products go back to output
// pixels while they are in L1 or L2: M never reaches memory.
#include "ops/conv_pool/cpu/winograd_convolution.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ops/common/env_switch.h"
#include "ops/conv_pool/cpu/padded_rows.h"
#include "ops/direct_conv/cpu/direct_conv_tile.h"
#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {
namespace {

// Bytes of one chunk's transformed patches V (one per thread, read once per group of output
// channel blocks, so it stays in L2 next to the group's slice of U): a chunk is a run of patches
// of one patch row, or whole patch rows when a row is shorter. All of U is read once per chunk, so
// a chunk too small reads a large U from L3 many times per image (docs/kernels.md, "Winograd
// chunks"). GoogLeNet conv2: one patch row, 28 patches.
constexpr int64_t kChunkBytes = 128 * 1024;
// ... but at least this many patches (8 AVX-512 register tiles): with 256 or more input channels
// 128 KiB held 8 patches or fewer (F(4x4): 3), and each chunk read the whole transformed weight
// (2-16 MB, from L3 or memory) for them; ResNet-50's 3x3 layers at 14x14 and 7x7 ran 1.3-1.5x
// faster at batch 8 with 48 (docs/kernels.md, "Winograd chunks").
constexpr int64_t kMinChunkTiles = 48;

bool winograd_enabled() {
  static const bool enabled = env_switch_on("DEEPREBIRTH_CONV_POOL_WINOGRAD");
  return enabled;
}

// Four float32 lanes (the x86-64 baseline's SSE registers), unaligned. The transforms run over
// channels in these, then one channel at a time for the rest.
typedef float Lanes4 __attribute__((vector_size(16), aligned(4)));

template <typename T>
__attribute__((always_inline)) inline T load(const float* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T>
__attribute__((always_inline)) inline void store(float* p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

// Calls body.template operator()<T>(c) for every channel c of `channels`: a vector of `Wide` at a
// time, then four (T = Lanes4), then one (T = float).
template <typename Wide = Lanes4, typename Body>
__attribute__((always_inline)) inline void over_channels(int64_t channels, const Body& body) {
  constexpr int64_t kLanes = sizeof(Wide) / sizeof(float);
  int64_t c = 0;
  if constexpr (kLanes > 4) {
    for (; c + kLanes <= channels; c += kLanes) body.template operator()<Wide>(c);
  }
  for (; c + 4 <= channels; c += 4) body.template operator()<Lanes4>(c);
  for (; c < channels; ++c) body.template operator()<float>(c);
}

// The transforms of Winograd F(M x M, 3x3), M = 2 or 4 (Lavin & Gray's matrices): a patch of
// kAlpha x kAlpha inputs gives M x M outputs from kElements products per channel pair.
template <int M>
struct Transforms {
  static_assert(M == 2 || M == 4, "Winograd F(2x2, 3x3) or F(4x4, 3x3)");
  static constexpr int kAlpha = M + 2;
  static constexpr int kElements = kAlpha * kAlpha;

  // G k of one kernel column k = (k0, k1, k2): kAlpha values. F(2x2): G = [[1, 0, 0],
  // [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]. F(4x4): G = [[1/4, 0, 0], -1/6 [1, 1, 1],
  // -1/6 [1, -1, 1], [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]].
  template <typename T>
  __attribute__((always_inline)) static void kernel(T k0, T k1, T k2, T* g) {
    if constexpr (M == 2) {
      g[0] = k0;
      g[1] = 0.5f * (k0 + k1 + k2);
      g[2] = 0.5f * (k0 - k1 + k2);
      g[3] = k2;
    } else {
      const T even = k0 + k2, even4 = k0 * (1.0f / 24) + k2 * (1.0f / 6);
      g[0] = k0 * 0.25f;
      g[1] = (even + k1) * (-1.0f / 6);
      g[2] = (even - k1) * (-1.0f / 6);
      g[3] = even4 + k1 * (1.0f / 12);
      g[4] = even4 - k1 * (1.0f / 12);
      g[5] = k2;
    }
  }

  // B^T d of one column d[0 .. kAlpha). F(2x2): B^T = [[1, 0, -1, 0], [0, 1, 1, 0],
  // [0, -1, 1, 0], [0, 1, 0, -1]]. F(4x4): B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
  // [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
  template <typename T>
  __attribute__((always_inline)) static void input(const T* d, T* t) {
    if constexpr (M == 2) {
      t[0] = d[0] - d[2];
      t[1] = d[1] + d[2];
      t[2] = d[2] - d[1];
      t[3] = d[1] - d[3];
    } else {
      const T a = d[4] - 4.0f * d[2], b = d[3] - 4.0f * d[1];  // rows 1 and 2
      const T c = d[4] - d[2], e = 2.0f * (d[3] - d[1]);       // rows 3 and 4
      t[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
      t[1] = a + b;
      t[2] = a - b;
      t[3] = c + e;
      t[4] = c - e;
      t[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
    }
  }

  // A^T m of one column m[0 .. kAlpha): M values. F(2x2): A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
  // F(4x4): A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
  // [0, 1, -1, 8, -8, 1]].
  template <typename T>
  __attribute__((always_inline)) static void output(const T* m, T* s) {
    if constexpr (M == 2) {
      s[0] = m[0] + m[1] + m[2];
      s[1] = m[1] - m[2] - m[3];
    } else {
      const T p1 = m[1] + m[2], d1 = m[1] - m[2], p3 = m[3] + m[4], d3 = m[3] - m[4];
      s[0] = m[0] + p1 + p3;
      s[1] = d1 + 2.0f * d3;
      s[2] = p1 + 4.0f * p3;
      s[3] = d1 + 8.0f * d3 + m[5];
    }
  }
};

// U = G g G^T for every (input, output) channel pair into (kElements, blocks, C_in, 16) (the lanes
// past C_out zero), read from w with its strides (no copy of a channels-last weight); in parallel
// over blocks.
template <int M>
at::Tensor transform_weight(const at::Tensor& w) {
  using F = Transforms<M>;
  constexpr int A = F::kAlpha;
  const int64_t out_channels = w.size(0), in_channels = w.size(1);
  const int64_t blocks = (out_channels + kDirectConvBlock - 1) / kDirectConvBlock;
  constexpr int64_t L = kDirectConvBlock;
  at::Tensor u = at::empty({F::kElements, blocks, in_channels, L}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = u.mutable_data_ptr<float>();
  const int64_t so = w.stride(0), si = w.stride(1), sr = w.stride(2), sc = w.stride(3);
  const int64_t k_step = blocks * in_channels * L;  // from U[k] to U[k + 1]
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lanes = std::min(L, out_channels - b * L);
      for (int64_t i = 0; i < in_channels; ++i) {
        float g[3][3][L] = {};  // the block's kernels, output channel innermost
        for (int64_t l = 0; l < lanes; ++l) {
          const float* k = src + (b * L + l) * so + i * si;
          for (int64_t r = 0; r < 3; ++r) {
            for (int64_t c = 0; c < 3; ++c) g[r][c][l] = k[r * sr + c * sc];
          }
        }
        float* u_bi = dst + (b * in_channels + i) * L;  // + (A * r + c) * k_step
        for (int64_t l = 0; l < L; ++l) {
          float gk[3][A];  // (G g)^T: column c of G g
          for (int64_t c = 0; c < 3; ++c) F::kernel(g[0][c][l], g[1][c][l], g[2][c][l], gk[c]);
          for (int64_t r = 0; r < A; ++r) {  // (G g) G^T
            float row[A];
            F::kernel(gk[0][r], gk[1][r], gk[2][r], row);
            for (int64_t c = 0; c < A; ++c) u_bi[(A * r + c) * k_step + l] = row[c];
          }
        }
      }
    }
  });
  return u;
}

// V = B^T d B of the patch whose top-left pixel is `patch` (pixels `pixel_step` apart, rows
// `row_step`), for `channels` contiguous channels, into v[k][0 .. channels) (k = kAlpha * i + j,
// the kElements rows `v_step` apart).
template <int M>
void transform_patch(const float* __restrict patch, int64_t pixel_step, int64_t row_step,
                     int64_t channels, float* __restrict v, int64_t v_step) {
  using F = Transforms<M>;
  constexpr int A = F::kAlpha;
  over_channels(channels, [&]<typename T>(int64_t c) {
    T t[A][A];                         // t[j][i]: row i of B^T d, column j
    for (int64_t j = 0; j < A; ++j) {  // B^T d
      const float* column = patch + j * pixel_step + c;
      T d[A];
      for (int64_t i = 0; i < A; ++i) d[i] = load<T>(column + i * row_step);
      F::input(d, t[j]);
    }
    for (int64_t i = 0; i < A; ++i) {  // (B^T d) B
      T row[A], out[A];
      for (int64_t j = 0; j < A; ++j) row[j] = t[j][i];
      F::input(row, out);
      for (int64_t j = 0; j < A; ++j) store<T>(v + (A * i + j) * v_step + c, out[j]);
    }
  });
}

// Y = A^T m A of one tile's products m[k][0 .. channels) (rows `m_step` apart) into the output
// pixels (0..rows, 0..cols) of the M x M block at `out`, plus bias[0 .. channels) and then ReLU
// when `bias` is given. In vectors of `Wide` (inlined into an instruction set's chunk function).
template <int M, typename Wide>
__attribute__((always_inline)) inline void transform_back(const float* __restrict m, int64_t m_step,
                                                          int64_t channels, int64_t rows,
                                                          int64_t cols, float* __restrict out,
                                                          int64_t pixel_step, int64_t row_step,
                                                          const float* __restrict bias, bool relu) {
  using F = Transforms<M>;
  constexpr int A = F::kAlpha;
  over_channels<Wide>(channels, [&]<typename T>(int64_t c) {
    T s[A][M];                         // s[j][i]: row i of A^T m, column j
    for (int64_t j = 0; j < A; ++j) {  // A^T m
      T column[A];
      for (int64_t i = 0; i < A; ++i) column[i] = load<T>(m + (A * i + j) * m_step + c);
      F::output(column, s[j]);
    }
    const T zero{};
    const T shift = bias != nullptr ? load<T>(bias + c) : zero;
    for (int64_t i = 0; i < rows; ++i) {  // (A^T m) A
      T row[A], y[M];
      for (int64_t j = 0; j < A; ++j) row[j] = s[j][i];
      F::output(row, y);
      for (int64_t j = 0; j < cols; ++j) {
        T value = y[j] + shift;
        if (relu) value = value > zero ? value : zero;
        store<T>(out + i * row_step + j * pixel_step + c, value);
      }
    }
  });
}

// One chunk: its transformed patches, the weight, and where each patch's M x M outputs go.
struct WinogradChunk {
  const float* v;  // (kElements, tiles, C_in)
  const float* u;  // (kElements, blocks, C_in, 16)
  int64_t tiles, in_channels, out_channels, blocks;
  int64_t first_block, end_block;  // the output channel blocks [first, end) to compute
  float* out;                      // the band's output rows, (rows, cols, C_out) with pixels
  int64_t pixel_stride;  // floats apart (C_out, or more in a wider tensor's channel slice)
  int64_t rows, cols;    // of the band
  int64_t tile_cols;     // patches per patch row of the band
  int64_t first_tile;    // the chunk's first patch, row-major in the band
  const float* bias;     // C_out values added to the output (with `relu`), or none
  bool relu;
};

// Transforms `count` patches' products back, from patch `first` of the chunk: m[k][q][width]
// (k the element of the transform, q the patch), `channels` of them from output channel c0.
template <int M, int Width>
__attribute__((always_inline)) inline void write_back(const WinogradChunk& chunk, int64_t first,
                                                      int64_t count, int64_t c0, int64_t channels,
                                                      const float* m, int64_t width) {
  const int64_t out_row = chunk.cols * chunk.pixel_stride;
  for (int64_t q = 0; q < count; ++q) {
    const int64_t t = chunk.first_tile + first + q;
    const int64_t y = M * (t / chunk.tile_cols), x = M * (t % chunk.tile_cols);
    transform_back<M, typename Vector<Width>::type>(
        m + q * width, count * width, channels, std::min<int64_t>(M, chunk.rows - y),
        std::min<int64_t>(M, chunk.cols - x), chunk.out + y * out_row + x * chunk.pixel_stride + c0,
        chunk.pixel_stride, out_row, chunk.bias != nullptr ? chunk.bias + c0 : nullptr, chunk.relu);
  }
}

// Patches [first, end) of the chunk for `Blocks` blocks from block b (the last with `lanes`
// channels), in register tiles of P patches, then one tile of the rest: the kElements products of
// each tile, then back to output pixels.
template <int M, int Width, int P, int Blocks>
__attribute__((always_inline)) inline void patches_in_tiles(const WinogradChunk& chunk,
                                                            int64_t first, int64_t end, int64_t b,
                                                            int64_t lanes) {
  static constexpr float kNoBias[Blocks * kDirectConvBlock] = {};
  constexpr int64_t kWidth = Blocks * kDirectConvBlock;
  const int64_t in_channels = chunk.in_channels;
  // V's patches as a 1x1 convolution's pixels: channel c of patch q at c + q * C_in
  TileWindow window{
      1, 1, nullptr, in_channels, 1, 1, 1, in_channels, in_channels * kDirectConvBlock};
  int64_t t = first;
  for (; t + P <= end; t += P) {
    constexpr int kElements = Transforms<M>::kElements;
    float m[kElements * P * kWidth];
    for (int64_t k = 0; k < kElements; ++k) {
      window.weight = chunk.u + ((k * chunk.blocks + b) * in_channels) * kDirectConvBlock;
      tile<Width, 1, P, Blocks>(window, kNoBias, chunk.v + (k * chunk.tiles + t) * in_channels,
                                m + k * P * kWidth, kWidth);
    }
    write_back<M, Width>(chunk, t, P, b * kDirectConvBlock, kWidth - kDirectConvBlock + lanes, m,
                         kWidth);
  }
  if constexpr (P > 1) patches_in_tiles<M, Width, P - 1, Blocks>(chunk, t, end, b, lanes);
}

// The whole chunk: groups of `Blocks` blocks while they last, then one block at a time (P1
// patches a tile).
template <int M, int Width, int P, int Blocks, int P1>
__attribute__((always_inline)) inline void chunk_in_tiles(const WinogradChunk& chunk) {
  int64_t b = chunk.first_block;
  const auto lanes = [&](int64_t last) {
    return std::min(kDirectConvBlock, chunk.out_channels - last * kDirectConvBlock);
  };
  for (; b + Blocks <= chunk.end_block; b += Blocks) {
    patches_in_tiles<M, Width, P, Blocks>(chunk, 0, chunk.tiles, b, lanes(b + Blocks - 1));
  }
  for (; b < chunk.end_block; ++b) {
    patches_in_tiles<M, Width, P1, 1>(chunk, 0, chunk.tiles, b, lanes(b));
  }
}

using ChunkFunction = void (*)(const WinogradChunk&);

// The register tiles of DirectBandConvolution (see there): AVX-512 6 patches x 4 blocks.
DEEPREBIRTH_CPU_VARIANTS(void, chunk2, (const WinogradChunk& c),
                         (chunk_in_tiles<2, 16, 6, 4, 12>(c)), (chunk_in_tiles<2, 8, 6, 1, 6>(c)),
                         (chunk_in_tiles<2, 4, 2, 1, 2>(c)), (chunk_in_tiles<2, 4, 6, 1, 6>(c)))
DEEPREBIRTH_CPU_VARIANTS(void, chunk4, (const WinogradChunk& c),
                         (chunk_in_tiles<4, 16, 6, 4, 12>(c)), (chunk_in_tiles<4, 8, 6, 1, 6>(c)),
                         (chunk_in_tiles<4, 4, 2, 1, 2>(c)), (chunk_in_tiles<4, 4, 6, 1, 6>(c)))

template <int M>
ChunkFunction chunk_function() {
  static const ChunkFunction function = M == 2 ? chunk2_for_cpu() : chunk4_for_cpu();
  return function;
}

// The largest magnitude's bits among `count` floats at `data`: integers, so the loop vectorises.
uint32_t largest_magnitude(const float* data, int64_t count) {
  constexpr uint32_t kMagnitude = 0x7fffffffu;
  uint32_t largest = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof(bits));
    largest = std::max(largest, bits & kMagnitude);
  }
  return largest;
}

// Whether every value of t (float32) is finite: no value with an all-ones exponent. In parallel
// over chunks of the memory of a dense tensor, or over the pixels of a 4-d tensor whose channels
// are contiguous (a channel slice of a channels-last tensor, which Winograd reads uncopied); ATen's
// isfinite for any other.
bool all_finite(const at::Tensor& t) {
  constexpr uint32_t kInfinity = 0x7f800000u;
  const float* data = t.const_data_ptr<float>();
  const auto both = [](bool a, bool b) { return a && b; };
  if (t.is_non_overlapping_and_dense()) {
    return at::parallel_reduce(
        0, t.numel(), int64_t{1} << 16, true,
        [&](int64_t begin, int64_t end, bool finite) {
          return finite && largest_magnitude(data + begin, end - begin) < kInfinity;
        },
        both);
  }
  if (t.dim() == 4 && t.stride(1) == 1) {
    const int64_t rows = t.size(0) * t.size(2), width = t.size(3), channels = t.size(1);
    return at::parallel_reduce(
        0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, width * channels)),
        true,
        [&](int64_t begin, int64_t end, bool finite) {
          for (int64_t r = begin; r < end && finite; ++r) {
            const float* row = data + (r / t.size(2)) * t.stride(0) + (r % t.size(2)) * t.stride(2);
            for (int64_t q = 0; q < width; ++q) {
              finite = finite && largest_magnitude(row + q * t.stride(3), channels) < kInfinity;
            }
          }
          return finite;
        },
        both);
  }
  return at::isfinite(t).all().item<bool>();
}

struct Padding {
  int64_t h, w;
};

// The end of the chunk of patches that starts at patch `t` of [t, end) (row-major, `tile_cols` a
// row): the rest of t's patch row and as many whole (or, at `end`, partial) rows after it as stay
// within `max_tiles` patches; a row's rest longer than that in equal parts of at most max_tiles.
int64_t chunk_end(int64_t t, int64_t end, int64_t tile_cols, int64_t max_tiles) {
  const int64_t row_end = std::min(end, (t / tile_cols + 1) * tile_cols);
  if (row_end - t > max_tiles) {
    const int64_t parts = (row_end - t + max_tiles - 1) / max_tiles;
    return t + (row_end - t + parts - 1) / parts;
  }
  int64_t chunk = row_end;
  while (chunk < end && std::min(end, chunk + tile_cols) - t <= max_tiles) {
    chunk = std::min(end, chunk + tile_cols);
  }
  return chunk;
}

// Patches [first_tile, end_tile) (row-major) of the output rows [row0, row0 + chunk.rows) of
// `image` by F(M x M, 3x3), `chunk` holding everything but the chunk's own fields, in chunks of
// at most `max_tiles` patches (chunk_end).
template <int M>
void convolve_rows(const at::Tensor& image, int64_t row0, Padding padding, int64_t max_tiles,
                   int64_t first_tile, int64_t end_tile, std::vector<float>& scratch,
                   WinogradChunk& chunk) {
  constexpr int kElements = Transforms<M>::kElements;
  const int64_t in_channels = chunk.in_channels;
  const int64_t tile_cols = chunk.tile_cols;
  const int64_t padded_w = M * tile_cols + 2;
  const int64_t in_row = padded_w * in_channels;
  // scratch: a chunk's padded input rows (at most this many patch rows), then V (kElements,
  // tiles, C_in)
  const int64_t max_rows = (max_tiles + tile_cols - 1) / tile_cols + 1;
  const int64_t input_size = (M * max_rows + 2) * in_row;
  scratch.resize(input_size + kElements * max_tiles * in_channels);
  float* input = scratch.data();
  float* v = input + input_size;
  chunk.v = v;
  for (int64_t t0 = first_tile; t0 < end_tile;) {
    const int64_t t1 = chunk_end(t0, end_tile, tile_cols, max_tiles), tiles = t1 - t0;
    const int64_t first_row = t0 / tile_cols, last_row = (t1 - 1) / tile_cols;
    const int64_t input_rows = M * (last_row - first_row + 1) + 2;
    copy_padded_rows(image, row0 + M * first_row, input_rows, padding.h, padding.w, padded_w, input,
                     {1, in_row, in_channels});
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t ty = (t0 + t) / tile_cols - first_row, tx = (t0 + t) % tile_cols;
      transform_patch<M>(input + M * ty * in_row + M * tx * in_channels, in_channels, in_row,
                         in_channels, v + t * in_channels, tiles * in_channels);
    }
    chunk.tiles = tiles;
    chunk.first_tile = t0;
    chunk_function<M>()(chunk);
    t0 = t1;
  }
}

}  // namespace

bool WinogradConvolution::exact_for(const at::Tensor& x, const at::Tensor& w) {
  return all_finite(w) && all_finite(x);
}

bool WinogradConvolution::finite(const at::Tensor& t) { return all_finite(t); }

bool WinogradConvolution::suits(const at::Tensor& w, c10::IntArrayRef stride,
                                c10::IntArrayRef dilation, int64_t groups) {
  return w.scalar_type() == at::kFloat && w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 &&
         stride.size() == 2 && stride[0] == 1 && stride[1] == 1 && dilation.size() == 2 &&
         dilation[0] == 1 && dilation[1] == 1 && groups == 1 && w.size(1) >= 8 && w.size(0) >= 16;
}

bool WinogradConvolution::applies(const at::Tensor& w, const ConvPoolArgs& args) {
  return winograd_enabled() && suits(w, args.stride, args.dilation, args.groups);
}

int64_t WinogradConvolution::channels_per_pass(const at::Tensor& w, int64_t conv_output_bytes) {
  const int64_t out_channels = w.size(0), channel_bytes = 16 * w.size(1) * 4;
  const int64_t budget = std::max(kPassWeightBytes, conv_output_bytes / 8);
  const int64_t passes = (out_channels * channel_bytes + budget - 1) / budget;
  if (passes <= 1) return out_channels;
  // round up to whole 16-channel blocks, to groups of four (the AVX-512 tile) when that is larger
  const int64_t per_pass = (out_channels + passes - 1) / passes;
  const int64_t multiple =
      per_pass > 4 * kDirectConvBlock ? 4 * kDirectConvBlock : kDirectConvBlock;
  return (per_pass + multiple - 1) / multiple * multiple;
}

at::Tensor WinogradConvolution::transform(const at::Tensor& w, int64_t tile) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_pack: expected tile 2 (F(2x2, 3x3)) or 4 ",
              "(F(4x4, 3x3)), but got ", tile);
  return tile == 2 ? transform_weight<2>(w) : transform_weight<4>(w);
}

int64_t WinogradConvolution::tile_of(const at::Tensor& transformed_weight) {
  return transformed_weight.size(0) == Transforms<4>::kElements ? 4 : 2;
}

WinogradConvolution::WinogradConvolution(const at::Tensor& w, const ConvPoolArgs& args,
                                         int64_t conv_w)
    : WinogradConvolution(transform_weight<2>(w), w.size(0), args.padding[0], args.padding[1],
                          conv_w) {}

WinogradConvolution::WinogradConvolution(const at::Tensor& transformed_weight, int64_t out_channels,
                                         int64_t padding_h, int64_t padding_w, int64_t conv_w)
    : transformed_weight_(transformed_weight),
      in_channels_(transformed_weight.size(2)),
      out_channels_(out_channels),
      padding_h_(padding_h),
      padding_w_(padding_w),
      conv_w_(conv_w) {}

int64_t WinogradConvolution::tiles_per_chunk() const {
  return std::max<int64_t>(kMinChunkTiles,
                           kChunkBytes / (transformed_weight_.size(0) * in_channels_ * 4));
}

void WinogradConvolution::operator()(const at::Tensor& image, int64_t row0, int64_t row1,
                                     float* out, std::vector<float>& scratch, const float* bias,
                                     bool relu, int64_t out_pixel_stride, int64_t first_block,
                                     int64_t end_block, int64_t first_tile,
                                     int64_t end_tile) const {
  WinogradChunk chunk{};
  chunk.u = transformed_weight_.const_data_ptr<float>();
  chunk.in_channels = in_channels_;
  chunk.out_channels = out_channels_;
  chunk.blocks = transformed_weight_.size(1);
  chunk.first_block = first_block;
  chunk.end_block = end_block < 0 ? chunk.blocks : end_block;
  chunk.out = out;
  chunk.pixel_stride = out_pixel_stride > 0 ? out_pixel_stride : out_channels_;
  chunk.rows = row1 - row0;
  chunk.cols = conv_w_;
  chunk.bias = bias;
  chunk.relu = relu;
  const int64_t m = tile();
  chunk.tile_cols = (conv_w_ + m - 1) / m;
  const int64_t tiles = (chunk.rows + m - 1) / m * chunk.tile_cols;
  const int64_t end = end_tile < 0 ? tiles : std::min(end_tile, tiles);
  const Padding padding{padding_h_, padding_w_};
  if (m == 4) {
    convolve_rows<4>(image, row0, padding, tiles_per_chunk(), first_tile, end, scratch, chunk);
  } else {
    convolve_rows<2>(image, row0, padding, tiles_per_chunk(), first_tile, end, scratch, chunk);
  }
}

}  // namespace deeprebirth::ops
