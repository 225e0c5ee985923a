// Winograd F(2x2, 3x3) band convolution (see winograd_convolution.h).
//
// Layouts (all channels innermost, so every transform loop runs over contiguous channels):
//   chunk input   (2 * patch rows + 2, 2 * tile_cols + 2, C_in): zero border and tail
//   V             (16, tiles, C_in)   transformed patches of one chunk
//   U             (16, C_in, C_out)   transformed weight
//   M = V U       (16, tiles, C_out)  per element of the 4x4 transform
//   output rows   (rows, cols, C_out)
#include "ops/conv_pool/cpu/winograd_convolution.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "ops/common/env_switch.h"
#include "ops/conv_pool/cpu/padded_rows.h"

namespace deeprebirth::ops {
namespace {

// Bytes of one chunk's products M (with V, a third of that, they are the chunk's working memory,
// one per thread); a chunk is at least one patch row. Measured when chunks ran under the old
// sequential schedule (GoogLeNet conv2, batch 1): 1 MiB 1.35x faster than the unfused sequence
// with 98% of its peak memory, 384 KiB 1.29x with 79%. On the thread-band schedule a conv2 chunk
// is one patch row (344 KB) at any bound under 688 KB.
constexpr int64_t kChunkBytes = 384 * 1024;

bool winograd_enabled() {
  static const bool enabled = env_switch_on("DEEPREBIRTH_CONV_POOL_WINOGRAD");
  return enabled;
}

// Four float32 lanes (the x86-64 baseline's SSE registers), unaligned. The transforms run over
// channels in these, then one channel at a time for the rest.
typedef float Lanes4 __attribute__((vector_size(16), aligned(4)));

template <typename T>
inline T load(const float* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T>
inline void store(float* p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

// Calls body.template operator()<T>(c) for every channel c of `channels`: four at a time
// (T = Lanes4), then one at a time (T = float).
template <typename Body>
inline void over_channels(int64_t channels, const Body& body) {
  int64_t c = 0;
  for (; c + 4 <= channels; c += 4) body.template operator()<Lanes4>(c);
  for (; c < channels; ++c) body.template operator()<float>(c);
}

// U = G g G^T for every (input, output) channel pair, G = [[1, 0, 0], [1/2, 1/2, 1/2],
// [1/2, -1/2, 1/2], [0, 0, 1]]: from g laid out (C_in, 3, 3, C_out), over runs of output
// channels, in parallel over input channels.
at::Tensor transform_weight(const at::Tensor& w) {
  const at::Tensor g = w.detach().permute({1, 2, 3, 0}).contiguous();  // float32: applies()
  const int64_t in_channels = g.size(0), out_channels = g.size(3);
  at::Tensor u = at::empty({16, in_channels, out_channels}, g.options());
  const float* src = g.const_data_ptr<float>();
  float* dst = u.mutable_data_ptr<float>();
  const int64_t plane = in_channels * out_channels;
  at::parallel_for(0, in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* k = src + i * 9 * out_channels;  // k[(3 * r + c) * out_channels + o]
      float* u_i = dst + i * out_channels;          // u_i[(4 * r + c) * plane + o]
      over_channels(out_channels, [&]<typename T>(int64_t o) {
        T gk[4][3];  // G g
        for (int64_t c = 0; c < 3; ++c) {
          const T k0 = load<T>(k + c * out_channels + o);
          const T k1 = load<T>(k + (3 + c) * out_channels + o);
          const T k2 = load<T>(k + (6 + c) * out_channels + o);
          gk[0][c] = k0;
          gk[1][c] = 0.5f * (k0 + k1 + k2);
          gk[2][c] = 0.5f * (k0 - k1 + k2);
          gk[3][c] = k2;
        }
        for (int64_t r = 0; r < 4; ++r) {  // (G g) G^T
          store<T>(u_i + (4 * r + 0) * plane + o, gk[r][0]);
          store<T>(u_i + (4 * r + 1) * plane + o, 0.5f * (gk[r][0] + gk[r][1] + gk[r][2]));
          store<T>(u_i + (4 * r + 2) * plane + o, 0.5f * (gk[r][0] - gk[r][1] + gk[r][2]));
          store<T>(u_i + (4 * r + 3) * plane + o, gk[r][2]);
        }
      });
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
// (rows `m_step` apart) into the output pixels (0..rows, 0..cols) of the 2x2 block at `out`.
void transform_back(const float* __restrict m, int64_t m_step, int64_t channels, int64_t rows,
                    int64_t cols, float* __restrict out, int64_t pixel_step, int64_t row_step) {
  over_channels(channels, [&]<typename T>(int64_t c) {
    T s[2][4];
    for (int64_t j = 0; j < 4; ++j) {  // A^T m
      const T m0 = load<T>(m + j * m_step + c), m1 = load<T>(m + (4 + j) * m_step + c);
      const T m2 = load<T>(m + (8 + j) * m_step + c), m3 = load<T>(m + (12 + j) * m_step + c);
      s[0][j] = m0 + m1 + m2;
      s[1][j] = m1 - m2 - m3;
    }
    for (int64_t i = 0; i < rows; ++i) {  // (A^T m) A
      store<T>(out + i * row_step + c, s[i][0] + s[i][1] + s[i][2]);
      if (cols > 1) store<T>(out + i * row_step + pixel_step + c, s[i][1] - s[i][2] - s[i][3]);
    }
  });
}

}  // namespace

bool WinogradConvolution::applies(const at::Tensor& w, const ConvPoolArgs& args) {
  return winograd_enabled() && w.scalar_type() == at::kFloat && w.size(2) == 3 && w.size(3) == 3 &&
         args.stride[0] == 1 && args.stride[1] == 1 && args.dilation[0] == 1 &&
         args.dilation[1] == 1 && args.groups == 1 && w.size(1) >= 8 && w.size(0) >= 16;
}

WinogradConvolution::WinogradConvolution(const at::Tensor& w, const ConvPoolArgs& args,
                                         int64_t conv_w)
    : transformed_weight_(transform_weight(w)),
      padding_h_(args.padding[0]),
      padding_w_(args.padding[1]),
      conv_w_(conv_w) {}

void WinogradConvolution::operator()(const at::Tensor& image, int64_t row0, int64_t row1,
                                     float* out, std::vector<float>& scratch) const {
  const int64_t in_channels = transformed_weight_.size(1);
  const int64_t out_channels = transformed_weight_.size(2);
  const int64_t rows = row1 - row0, cols = conv_w_;
  const int64_t tile_rows = (rows + 1) / 2, tile_cols = (cols + 1) / 2;
  const int64_t padded_w = 2 * tile_cols + 2;
  const int64_t in_row = padded_w * in_channels, out_row = cols * out_channels;
  // chunks of whole patch rows, about kChunkBytes of products each
  const int64_t row_product_bytes = tile_cols * 16 * out_channels * 4;
  const int64_t chunk_rows =
      std::clamp<int64_t>(kChunkBytes / row_product_bytes, 1, std::max<int64_t>(tile_rows, 1));
  const int64_t chunk_tiles = chunk_rows * tile_cols;
  // scratch: the chunk's padded input rows, V (16, tiles, C_in) and M (16, tiles, C_out)
  const int64_t input_size = (2 * chunk_rows + 2) * in_row;
  scratch.resize(input_size + 16 * chunk_tiles * (in_channels + out_channels));
  float* input = scratch.data();
  float* v_data = input + input_size;
  float* m_data = v_data + 16 * chunk_tiles * in_channels;
  const at::TensorOptions options = transformed_weight_.options();
  for (int64_t first = 0; first < tile_rows; first += chunk_rows) {  // patch rows [first, last)
    const int64_t last = std::min(tile_rows, first + chunk_rows);
    const int64_t tiles = (last - first) * tile_cols;
    copy_padded_rows(image, row0 + 2 * first, 2 * (last - first) + 2, padding_h_, padding_w_,
                     padded_w, input, {1, in_row, in_channels});
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t ty = t / tile_cols, tx = t % tile_cols;
      transform_patch(input + 2 * ty * in_row + 2 * tx * in_channels, in_channels, in_row,
                      in_channels, v_data + t * in_channels, tiles * in_channels);
    }
    at::Tensor m = at::from_blob(m_data, {16, tiles, out_channels}, options);
    at::bmm_out(m, at::from_blob(v_data, {16, tiles, in_channels}, options), transformed_weight_);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t y = 2 * (first + t / tile_cols), x = 2 * (t % tile_cols);
      transform_back(m_data + t * out_channels, tiles * out_channels, out_channels,
                     std::min<int64_t>(2, rows - y), std::min<int64_t>(2, cols - x),
                     out + y * out_row + x * out_channels, out_channels, out_row);
    }
  }
}

}  // namespace deeprebirth::ops
