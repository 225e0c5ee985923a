// Float32 max-pooling epilogue of conv_pool's CPU kernel (see max_pool_float.h).
//
// Separable, per pooled row: (1) the window's rows are reduced into one row in a buffer (conv_w * C
// values, L1-resident for the first layers), a single pass over the tile rows that also looks for
// NaN; (2) each pooled pixel reduces its window's columns of that buffer, adds the bias and
// applies ReLU (both monotone, so this equals pooling relu(conv + bias)) and stores once (into
// an NCHW output through a pooled-row buffer and transpose_floats).
// Both use the plain max (one vmaxps). ATen's max_pool2d propagates NaN, which takes a compare,
// a mask merge and a blend per value; without a NaN in the rows the two agree, and a row with one
// hands the band back to the generic epilogue. Before this, the generic epilogue took a tenth of
// GoogLeNet conv1's fused time.
#include "ops/conv_pool/cpu/max_pool_float.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/common/cpu_isa.h"
#include "ops/common/transpose.h"

namespace deeprebirth::ops {
namespace {

// Pointers and sizes of one call, for the per-instruction-set functions.
struct MaxPoolRows {
  const float* tile;  // channels-last rows [tile_row0, ...) of conv_w pixels of `channels`
  int64_t tile_row0, channels, conv_h, conv_w;
  const float* bias;  // `channels` values (zeros without a bias)
  bool relu;
  PoolAxes pool;
  int64_t p0, p1, out_w;
  float* out;  // the output image, (C, out_h, out_w) with the strides below
  int64_t out_sc, out_sh, out_sw;
  float* row;     // conv_w * channels floats of scratch
  float* pooled;  // out_w * channels floats of scratch (outputs whose channels are not contiguous)
};

// x86's maxps: b when b > a, else a (also when either is NaN).
__attribute__((always_inline)) inline float max_of(float a, float b) { return b > a ? b : a; }

// 1 when x is NaN, from its bits (an integer compare, which vectorises in any instruction set).
__attribute__((always_inline)) inline uint32_t is_nan(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits & 0x7fffffffu) > 0x7f800000u;
}

// row[i] = max over the `Rows` rows from `first` (`row_size` apart) of their value i; whether any
// of them is NaN.
template <int Rows>
__attribute__((always_inline)) inline bool reduce_rows(const float* __restrict first,
                                                       int64_t row_size, float* __restrict row) {
  uint32_t nan = 0;
  for (int64_t i = 0; i < row_size; ++i) {
    float m = first[i];
    nan |= is_nan(m);
    for (int r = 1; r < Rows; ++r) {
      const float x = first[r * row_size + i];
      nan |= is_nan(x);
      m = max_of(m, x);
    }
    row[i] = m;
  }
  return nan != 0;
}

// The same for any number of rows, one row at a time through `row`.
__attribute__((always_inline)) inline bool reduce_rows(const float* __restrict first, int64_t rows,
                                                       int64_t row_size, float* __restrict row) {
  switch (rows) {
    case 1:
      return reduce_rows<1>(first, row_size, row);
    case 2:
      return reduce_rows<2>(first, row_size, row);
    case 3:
      return reduce_rows<3>(first, row_size, row);
    default:
      break;
  }
  bool nan = reduce_rows<3>(first, row_size, row);
  for (int64_t r = 3; r < rows; ++r) {
    const float* __restrict next = first + r * row_size;
    uint32_t found = 0;
    for (int64_t i = 0; i < row_size; ++i) {
      found |= is_nan(next[i]);
      row[i] = max_of(row[i], next[i]);
    }
    nan |= found != 0;
  }
  return nan;
}

// Channels [0, Lanes) of one pooled pixel: the max over `columns` pixels of the reduced row from
// `window`, plus bias, ReLU, stored at dst. Loops over the Lanes values, which GCC turns into
// vector registers of the function's instruction set.
template <int Lanes>
__attribute__((always_inline)) inline void pool_pixel(const MaxPoolRows& t, const float* window,
                                                      int64_t columns, const float* bias,
                                                      float* dst) {
  float m[Lanes];
  for (int l = 0; l < Lanes; ++l) m[l] = window[l];
  for (int64_t k = 1; k < columns; ++k) {
    const float* pixel = window + k * t.channels;
    for (int l = 0; l < Lanes; ++l) m[l] = max_of(m[l], pixel[l]);
  }
  for (int l = 0; l < Lanes; ++l) {
    const float y = m[l] + bias[l];
    dst[l] = t.relu && y < 0.0f ? 0.0f : y;
  }
}

// Pooled row p from t.pooled (pixels of contiguous channels) into the output.
inline void store_pooled_row(const MaxPoolRows& t, int64_t p) {
  float* out = t.out + p * t.out_sh;
  if (t.out_sw == 1) {  // NCHW: channel planes
    return transpose_floats(t.pooled, t.channels, t.out_w, t.channels, out, t.out_sc);
  }
  for (int64_t q = 0; q < t.out_w; ++q) {
    for (int64_t c = 0; c < t.channels; ++c)
      out[q * t.out_sw + c * t.out_sc] = t.pooled[q * t.channels + c];
  }
}

// Pools rows [p0, p1); false, at the first window rows holding a NaN, when they are not finished.
template <int Width>
__attribute__((always_inline)) inline bool pool_rows(const MaxPoolRows& t) {
  const int64_t row_size = t.conv_w * t.channels;
  for (int64_t p = t.p0; p < t.p1; ++p) {
    const PoolWindow rows = pool_window(p, t.conv_h, t.pool.rows);
    const float* first = t.tile + (rows.start - t.tile_row0) * row_size;
    if (reduce_rows(first, rows.end - rows.start, row_size, t.row)) return false;
    const bool channels_last = t.out_sc == 1;
    float* pooled = channels_last ? t.out + p * t.out_sh : t.pooled;
    const int64_t pixel_step = channels_last ? t.out_sw : t.channels;
    for (int64_t q = 0; q < t.out_w; ++q) {
      const PoolWindow cols = pool_window(q, t.conv_w, t.pool.cols);
      const float* window = t.row + cols.start * t.channels;
      const int64_t columns = cols.end - cols.start;
      float* dst = pooled + q * pixel_step;
      int64_t c = 0;
      for (; c + 4 * Width <= t.channels; c += 4 * Width) {
        pool_pixel<4 * Width>(t, window + c, columns, t.bias + c, dst + c);
      }
      for (; c + Width <= t.channels; c += Width) {
        pool_pixel<Width>(t, window + c, columns, t.bias + c, dst + c);
      }
      for (; c < t.channels; ++c) pool_pixel<1>(t, window + c, columns, t.bias + c, dst + c);
    }
    if (!channels_last) store_pooled_row(t, p);
  }
  return true;
}

using PoolFunction = bool (*)(const MaxPoolRows&);

DEEPREBIRTH_CPU_VARIANTS(bool, pool, (const MaxPoolRows& t), (pool_rows<16>(t)), (pool_rows<8>(t)),
                         (pool_rows<4>(t)), (pool_rows<4>(t)))

PoolFunction pool_function() {
  static const PoolFunction function = pool_for_cpu();
  return function;
}

}  // namespace

bool bias_relu_max_pool_float_rows(const at::Tensor& tile, int64_t tile_row0,
                                   const at::Tensor& bias, const RowBand& band,
                                   const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                                   const at::Tensor& out_image) {
  const int64_t channels = tile.size(1);
  std::vector<float> zeros;
  if (!bias.defined()) zeros.assign(channels, 0.0f);
  std::vector<float> row(geometry.conv_w * channels);
  std::vector<float> pooled(out_image.stride(0) == 1 ? 0 : geometry.out_w * channels);
  MaxPoolRows t{};
  t.tile = tile.const_data_ptr<float>();
  t.tile_row0 = tile_row0;
  t.channels = channels;
  t.conv_h = geometry.conv_h;
  t.conv_w = geometry.conv_w;
  t.bias = bias.defined() ? bias.const_data_ptr<float>() : zeros.data();
  t.relu = args.relu;
  t.pool = pool_axes(args);
  t.p0 = band.p0;
  t.p1 = band.p1;
  t.out_w = geometry.out_w;
  t.out = out_image.mutable_data_ptr<float>();
  t.out_sc = out_image.stride(0);
  t.out_sh = out_image.stride(1);
  t.out_sw = out_image.stride(2);
  t.row = row.data();
  t.pooled = pooled.data();
  return pool_function()(t);
}

}  // namespace deeprebirth::ops
