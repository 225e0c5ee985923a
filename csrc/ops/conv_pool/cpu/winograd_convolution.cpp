// Winograd F(2x2, 3x3) band convolution (see winograd_convolution.h).
//
// Layouts (all channels innermost, so every transform loop runs over contiguous channels):
//   chunk input   (2 * patch rows + 2, 2 * tile_cols + 2, C_in): zero border and tail
//   V             (16, tiles, C_in)             transformed patches of one chunk
//   U             (16, blocks, C_in, 16)        transformed weight, 16 output channels a block
//   M = V U       (16, P, Blocks * 16)          one register tile's products, on the stack
//   output rows   (rows, cols, C_out)
// The products run in direct_conv's register tiles (a 1x1 convolution of V's patches by U's
// blocks, one per element of the 4x4 transform), and each tile's 16 products go back to output
// pixels while they are in L1: M never reaches memory.
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

// U = G g G^T for every (input, output) channel pair, G = [[1, 0, 0], [1/2, 1/2, 1/2],
// [1/2, -1/2, 1/2], [0, 0, 1]], into (16, blocks, C_in, 16) (the lanes past C_out zero), read
// from w with its strides (no copy of a channels-last weight); in parallel over blocks.
at::Tensor transform_weight(const at::Tensor& w) {
  const int64_t out_channels = w.size(0), in_channels = w.size(1);
  const int64_t blocks = (out_channels + kDirectConvBlock - 1) / kDirectConvBlock;
  constexpr int64_t L = kDirectConvBlock;
  at::Tensor u = at::empty({16, blocks, in_channels, L}, w.options());
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
        float gk[4][3][L];  // G g
        for (int64_t c = 0; c < 3; ++c) {
          for (int64_t l = 0; l < L; ++l) {
            const float k0 = g[0][c][l], k1 = g[1][c][l], k2 = g[2][c][l];
            gk[0][c][l] = k0;
            gk[1][c][l] = 0.5f * (k0 + k1 + k2);
            gk[2][c][l] = 0.5f * (k0 - k1 + k2);
            gk[3][c][l] = k2;
          }
        }
        float* u_bi = dst + (b * in_channels + i) * L;  // + (4 * r + c) * k_step
        for (int64_t r = 0; r < 4; ++r) {               // (G g) G^T
          for (int64_t l = 0; l < L; ++l) {
            const float g0 = gk[r][0][l], g1 = gk[r][1][l], g2 = gk[r][2][l];
            u_bi[(4 * r + 0) * k_step + l] = g0;
            u_bi[(4 * r + 1) * k_step + l] = 0.5f * (g0 + g1 + g2);
            u_bi[(4 * r + 2) * k_step + l] = 0.5f * (g0 - g1 + g2);
            u_bi[(4 * r + 3) * k_step + l] = g2;
          }
        }
      }
    }
  });
  return u;
}

// V = B^T d B of the patch whose top-left pixel is `patch` (pixels `pixel_step` apart, rows
// `row_step`), for `channels` contiguous channels, into v[k][0 .. channels) (k = 4 * i + j, the
// 16 rows `v_step` apart). B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
void transform_patch(const float* __restrict patch, int64_t pixel_step, int64_t row_step,
                     int64_t channels, float* __restrict v, int64_t v_step) {
  over_channels(channels, [&]<typename T>(int64_t c) {
    T t[4][4];
    for (int64_t j = 0; j < 4; ++j) {  // B^T d
      const float* column = patch + j * pixel_step + c;
      const T d0 = load<T>(column), d1 = load<T>(column + row_step);
      const T d2 = load<T>(column + 2 * row_step), d3 = load<T>(column + 3 * row_step);
      t[0][j] = d0 - d2;
      t[1][j] = d1 + d2;
      t[2][j] = d2 - d1;
      t[3][j] = d1 - d3;
    }
    for (int64_t i = 0; i < 4; ++i) {  // (B^T d) B
      store<T>(v + (4 * i + 0) * v_step + c, t[i][0] - t[i][2]);
      store<T>(v + (4 * i + 1) * v_step + c, t[i][1] + t[i][2]);
      store<T>(v + (4 * i + 2) * v_step + c, t[i][2] - t[i][1]);
      store<T>(v + (4 * i + 3) * v_step + c, t[i][1] - t[i][3]);
    }
  });
}

// Y = A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], of one tile's products m[k][0 .. channels)
// (rows `m_step` apart) into the output pixels (0..rows, 0..cols) of the 2x2 block at `out`,
// plus bias[0 .. channels) and then ReLU when `bias` is given. In vectors of `Wide` (inlined into
// an instruction set's chunk function).
template <typename Wide>
__attribute__((always_inline)) inline void transform_back(const float* __restrict m, int64_t m_step,
                                                          int64_t channels, int64_t rows,
                                                          int64_t cols, float* __restrict out,
                                                          int64_t pixel_step, int64_t row_step,
                                                          const float* __restrict bias, bool relu) {
  over_channels<Wide>(channels, [&]<typename T>(int64_t c) {
    T s[2][4];
    for (int64_t j = 0; j < 4; ++j) {  // A^T m
      const T m0 = load<T>(m + j * m_step + c), m1 = load<T>(m + (4 + j) * m_step + c);
      const T m2 = load<T>(m + (8 + j) * m_step + c), m3 = load<T>(m + (12 + j) * m_step + c);
      s[0][j] = m0 + m1 + m2;
      s[1][j] = m1 - m2 - m3;
    }
    const T zero{};
    const T shift = bias != nullptr ? load<T>(bias + c) : zero;
    const auto finish = [&](T value) {
      value = value + shift;
      return relu ? (value > zero ? value : zero) : value;
    };
    for (int64_t i = 0; i < rows; ++i) {  // (A^T m) A
      store<T>(out + i * row_step + c, finish(s[i][0] + s[i][1] + s[i][2]));
      if (cols > 1) {
        store<T>(out + i * row_step + pixel_step + c, finish(s[i][1] - s[i][2] - s[i][3]));
      }
    }
  });
}

// One chunk: its transformed patches, the weight, and where each patch's 2x2 outputs go.
struct WinogradChunk {
  const float* v;  // (16, tiles, C_in)
  const float* u;  // (16, blocks, C_in, 16)
  int64_t tiles, in_channels, out_channels, blocks;
  int64_t first_block, end_block;  // the output channel blocks [first, end) to compute
  float* out;                      // the band's output rows, (rows, cols, C_out) with pixels
  int64_t pixel_stride;  // floats apart (C_out, or more in a wider tensor's channel slice)
  int64_t rows, cols;    // of the band
  int64_t first_row;     // the chunk's first patch row (of the band)
  int64_t first_col;     // the chunk's first patch column
  int64_t chunk_cols;    // patches per patch row of the chunk
  const float* bias;     // C_out values added to the output (with `relu`), or none
  bool relu;
};

// Transforms `count` patches' products back, from patch `first` of the chunk: m[k][q][width]
// (k the element of the 4x4 transform, q the patch), `channels` of them from output channel c0.
template <int Width>
__attribute__((always_inline)) inline void write_back(const WinogradChunk& chunk, int64_t first,
                                                      int64_t count, int64_t c0, int64_t channels,
                                                      const float* m, int64_t width) {
  const int64_t out_row = chunk.cols * chunk.pixel_stride;
  for (int64_t q = 0; q < count; ++q) {
    const int64_t t = first + q;
    const int64_t y = 2 * (chunk.first_row + t / chunk.chunk_cols);
    const int64_t x = 2 * (chunk.first_col + t % chunk.chunk_cols);
    transform_back<typename Vector<Width>::type>(
        m + q * width, count * width, channels, std::min<int64_t>(2, chunk.rows - y),
        std::min<int64_t>(2, chunk.cols - x), chunk.out + y * out_row + x * chunk.pixel_stride + c0,
        chunk.pixel_stride, out_row, chunk.bias != nullptr ? chunk.bias + c0 : nullptr, chunk.relu);
  }
}

// Patches [first, end) of the chunk for `Blocks` blocks from block b (the last with `lanes`
// channels), in register tiles of P patches, then one tile of the rest: the 16 products of each
// tile, then back to output pixels.
template <int Width, int P, int Blocks>
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
    float m[16 * P * kWidth];
    for (int64_t k = 0; k < 16; ++k) {
      window.weight = chunk.u + ((k * chunk.blocks + b) * in_channels) * kDirectConvBlock;
      tile<Width, 1, P, Blocks>(window, kNoBias, chunk.v + (k * chunk.tiles + t) * in_channels,
                                m + k * P * kWidth, kWidth);
    }
    write_back<Width>(chunk, t, P, b * kDirectConvBlock, kWidth - kDirectConvBlock + lanes, m,
                      kWidth);
  }
  if constexpr (P > 1) patches_in_tiles<Width, P - 1, Blocks>(chunk, t, end, b, lanes);
}

// The whole chunk: groups of `Blocks` blocks while they last, then one block at a time (P1
// patches a tile).
template <int Width, int P, int Blocks, int P1>
__attribute__((always_inline)) inline void chunk_in_tiles(const WinogradChunk& chunk) {
  int64_t b = chunk.first_block;
  const auto lanes = [&](int64_t last) {
    return std::min(kDirectConvBlock, chunk.out_channels - last * kDirectConvBlock);
  };
  for (; b + Blocks <= chunk.end_block; b += Blocks) {
    patches_in_tiles<Width, P, Blocks>(chunk, 0, chunk.tiles, b, lanes(b + Blocks - 1));
  }
  for (; b < chunk.end_block; ++b) {
    patches_in_tiles<Width, P1, 1>(chunk, 0, chunk.tiles, b, lanes(b));
  }
}

using ChunkFunction = void (*)(const WinogradChunk&);

// The register tiles of DirectBandConvolution (see there): AVX-512 6 patches x 4 blocks.
DEEPREBIRTH_CPU_VARIANTS(void, chunk, (const WinogradChunk& c), (chunk_in_tiles<16, 6, 4, 12>(c)),
                         (chunk_in_tiles<8, 6, 1, 6>(c)), (chunk_in_tiles<4, 2, 1, 2>(c)),
                         (chunk_in_tiles<4, 6, 1, 6>(c)))

ChunkFunction chunk_function() {
  static const ChunkFunction function = chunk_for_cpu();
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

at::Tensor WinogradConvolution::transform(const at::Tensor& w) { return transform_weight(w); }

WinogradConvolution::WinogradConvolution(const at::Tensor& w, const ConvPoolArgs& args,
                                         int64_t conv_w)
    : WinogradConvolution(transform_weight(w), w.size(0), args.padding[0], args.padding[1],
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
  return std::max<int64_t>(1, kChunkBytes / (16 * in_channels_ * 4));
}

void WinogradConvolution::operator()(const at::Tensor& image, int64_t row0, int64_t row1,
                                     float* out, std::vector<float>& scratch, const float* bias,
                                     bool relu, int64_t out_pixel_stride, int64_t first_block,
                                     int64_t end_block) const {
  const int64_t in_channels = in_channels_, out_channels = out_channels_;
  const int64_t rows = row1 - row0, cols = conv_w_;
  const int64_t tile_rows = (rows + 1) / 2, tile_cols = (cols + 1) / 2;
  const int64_t padded_w = 2 * tile_cols + 2;
  const int64_t in_row = padded_w * in_channels;
  // chunks: whole patch rows when a row's V is under kChunkBytes, else equal parts of one row
  const int64_t max_tiles = tiles_per_chunk();
  const int64_t chunk_rows = std::clamp<int64_t>(max_tiles / tile_cols, 1, tile_rows);
  const int64_t parts = (tile_cols + max_tiles - 1) / max_tiles;  // of a row when chunk_rows is 1
  const int64_t part_cols = (tile_cols + parts - 1) / parts;
  // scratch: the chunk's padded input rows, then V (16, tiles, C_in)
  const int64_t input_size = (2 * chunk_rows + 2) * in_row;
  const int64_t v_size = 16 * chunk_rows * part_cols * in_channels;
  scratch.resize(input_size + v_size);
  float* input = scratch.data();
  float* v = input + input_size;
  WinogradChunk chunk{};
  chunk.v = v;
  chunk.u = transformed_weight_.const_data_ptr<float>();
  chunk.in_channels = in_channels;
  chunk.out_channels = out_channels;
  chunk.blocks = transformed_weight_.size(1);
  chunk.first_block = first_block;
  chunk.end_block = end_block < 0 ? chunk.blocks : end_block;
  chunk.out = out;
  chunk.pixel_stride = out_pixel_stride > 0 ? out_pixel_stride : out_channels;
  chunk.rows = rows;
  chunk.cols = cols;
  chunk.bias = bias;
  chunk.relu = relu;
  for (int64_t first = 0; first < tile_rows; first += chunk_rows) {  // patch rows [first, last)
    const int64_t last = std::min(tile_rows, first + chunk_rows);
    copy_padded_rows(image, row0 + 2 * first, 2 * (last - first) + 2, padding_h_, padding_w_,
                     padded_w, input, {1, in_row, in_channels});
    for (int64_t col0 = 0; col0 < tile_cols; col0 += part_cols) {  // patch columns [col0, col1)
      const int64_t col1 = std::min(tile_cols, col0 + part_cols);
      const int64_t chunk_cols = col1 - col0, tiles = (last - first) * chunk_cols;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t ty = t / chunk_cols, tx = col0 + t % chunk_cols;
        transform_patch(input + 2 * ty * in_row + 2 * tx * in_channels, in_channels, in_row,
                        in_channels, v + t * in_channels, tiles * in_channels);
      }
      chunk.tiles = tiles;
      chunk.first_row = first;
      chunk.first_col = col0;
      chunk.chunk_cols = chunk_cols;
      chunk_function()(chunk);
    }
  }
}

}  // namespace deeprebirth::ops
