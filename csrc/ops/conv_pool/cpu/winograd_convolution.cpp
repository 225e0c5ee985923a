// Winograd F(2x2, 3x3) band convolution (see winograd_convolution.h).
//
// Layouts (all channels innermost, so every transform loop runs over contiguous channels):
//   chunk input   (2 * patch rows + 2, 2 * tile_cols + 2, C_in): zero border and tail
//   V             (16, tiles, C_in)   transformed patches of one chunk
//   U             (16, C_in, C_out)   transformed weight
//   M = V U       (16, tiles, C_out)  per element of the 4x4 transform
//   output        (N, rows, cols, C_out)
#include "ops/conv_pool/cpu/winograd_convolution.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace deeprebirth::ops {
namespace {

// Bytes of one chunk's products M (with V, a third of that, they are the chunk's working memory,
// one per thread). GoogLeNet conv2 at batch 1, two threads, one process: chunks of 1 MiB ran
// 1.35x faster than the unfused sequence with 98% of its peak memory, 384 KiB 1.29x with 79%,
// 256 KiB 1.27x with 77%.
constexpr int64_t kChunkBytes = 384 * 1024;

bool winograd_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("DEEPREBIRTH_CONV_POOL_WINOGRAD");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
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

// Rows [row0, row1) of image n of `source` (channels-last contiguous), (row1 - row0, padded_w,
// C_in): `padding_w` zero columns on the left, zeros right of the image and below its last row.
// Each value is written once: the image's rows copied, only the border zeroed.
at::Tensor padded_rows(const at::Tensor& source, int64_t n, int64_t row0, int64_t row1,
                       int64_t padded_w, int64_t padding_w) {
  const int64_t channels = source.size(1), height = source.size(2), width = source.size(3);
  at::Tensor rows = at::empty({row1 - row0, padded_w, channels}, source.options());
  const float* src = source.const_data_ptr<float>() + n * height * width * channels;
  float* dst = rows.mutable_data_ptr<float>();
  const int64_t left = padding_w * channels, image = width * channels;
  const int64_t right = (padded_w - padding_w - width) * channels;
  for (int64_t r = row0; r < row1; ++r, dst += padded_w * channels) {
    if (r >= height) {
      std::fill_n(dst, padded_w * channels, 0.0f);
      continue;
    }
    std::fill_n(dst, left, 0.0f);
    std::memcpy(dst + left, src + r * image, image * sizeof(float));
    std::fill_n(dst + left + image, right, 0.0f);
  }
  return rows;
}

}  // namespace

bool WinogradConvolution::applies(const at::Tensor& w, const ConvPoolArgs& args) {
  return winograd_enabled() && w.scalar_type() == at::kFloat && w.size(2) == 3 && w.size(3) == 3 &&
         args.stride[0] == 1 && args.stride[1] == 1 && args.dilation[0] == 1 &&
         args.dilation[1] == 1 && args.groups == 1 && w.size(1) >= 8 && w.size(0) >= 16;
}

WinogradConvolution::WinogradConvolution(const at::Tensor& w, int64_t padding_w)
    : transformed_weight_(transform_weight(w)), padding_w_(padding_w) {}

at::Tensor WinogradConvolution::operator()(const at::Tensor& input) const {
  const int64_t batch = input.size(0), in_channels = input.size(1), height = input.size(2);
  const int64_t out_channels = transformed_weight_.size(2);
  const int64_t rows = height - 2, cols = input.size(3) + 2 * padding_w_ - 2;
  const int64_t tile_rows = (rows + 1) / 2, tile_cols = (cols + 1) / 2;
  const int64_t padded_w = 2 * tile_cols + 2;
  at::Tensor out = at::empty({batch, out_channels, rows, cols},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));

  // Chunks of whole patch rows of one image, about kChunkBytes of products each; at batch sizes
  // under the thread count, as many per image as make every thread's share equal.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t image_product_bytes = tile_rows * tile_cols * 16 * out_channels * 4;
  const int64_t per_image_share = (threads + batch - 1) / batch;
  int64_t chunks_per_image = (image_product_bytes + kChunkBytes - 1) / kChunkBytes;
  chunks_per_image = (chunks_per_image + per_image_share - 1) / per_image_share * per_image_share;
  chunks_per_image = std::clamp<int64_t>(chunks_per_image, 1, tile_rows);
  float* dst = out.mutable_data_ptr<float>();
  const int64_t in_row = padded_w * in_channels, out_row = cols * out_channels;
  const at::Tensor source = input.contiguous(at::MemoryFormat::ChannelsLast);
  at::parallel_for(0, batch * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t n = chunk / chunks_per_image, part = chunk % chunks_per_image;
      const int64_t first = part * tile_rows / chunks_per_image;  // patch rows [first, last)
      const int64_t last = (part + 1) * tile_rows / chunks_per_image;
      const int64_t tiles = (last - first) * tile_cols;
      const at::Tensor patch_rows =
          padded_rows(source, n, 2 * first, 2 * last + 2, padded_w, padding_w_);
      const float* in = patch_rows.const_data_ptr<float>();
      at::Tensor v = at::empty({16, tiles, in_channels}, input.options());
      float* v_data = v.mutable_data_ptr<float>();
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t ty = t / tile_cols, tx = t % tile_cols;
        transform_patch(in + 2 * ty * in_row + 2 * tx * in_channels, in_channels, in_row,
                        in_channels, v_data + t * in_channels, tiles * in_channels);
      }
      const at::Tensor m = at::bmm(v, transformed_weight_);
      const float* m_data = m.const_data_ptr<float>();
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t y = 2 * (first + t / tile_cols), x = 2 * (t % tile_cols);
        transform_back(m_data + t * out_channels, tiles * out_channels, out_channels,
                       std::min<int64_t>(2, rows - y), std::min<int64_t>(2, cols - x),
                       dst + (n * rows + y) * out_row + x * out_channels, out_channels, out_row);
      }
    }
  });
  return out;
}

}  // namespace deeprebirth::ops
