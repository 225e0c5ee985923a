// The CPU bias + ReLU + pooling epilogue of conv_pool (see bias_relu_pool.h).
//
// Pooling is separable: for each pooled row the window's convolution rows are first reduced
// element-wise into one row buffer (contiguous, conv_w * C values, so the loop vectorises), then
// each pooled column reduces its window's columns of that buffer, one vector of C channels at a
// time. Max pooling adds the bias and applies ReLU after the reduction (both are monotone, so
// this equals pooling relu(conv + bias)); average pooling with ReLU must apply it per cell.
#include "ops/conv_pool/cpu/bias_relu_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "ops/common/cpu_isa.h"
#include "ops/conv_pool/cpu/max_pool_float.h"

namespace deeprebirth::ops {
namespace {

// max that propagates NaN like ATen's max_pool2d. Branch-free (`|`, not `||`) so that loops
// over it vectorise.
template <typename T>
inline T max_nan(T a, T b) {
  const bool take_b = (b > a) | (b != b);
  return take_b ? b : a;
}

template <typename scalar_t>
__attribute__((always_inline)) inline void pool_rows(const at::Tensor& tile, int64_t tile_row0,
                                                     const at::Tensor& bias, const RowBand& band,
                                                     const ConvPoolGeometry& g,
                                                     const ConvPoolArgs& args,
                                                     const at::Tensor& out_image) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = tile.size(1), width = tile.size(3), row_size = channels * width;
  const scalar_t* tile_data = tile.const_data_ptr<scalar_t>();
  std::vector<acc_t> bias_acc(channels, acc_t(0));
  if (bias.defined()) {
    const scalar_t* bias_data = bias.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c) bias_acc[c] = static_cast<acc_t>(bias_data[c]);
  }
  scalar_t* out = out_image.mutable_data_ptr<scalar_t>();
  const int64_t out_sc = out_image.stride(0), out_sh = out_image.stride(1);
  const int64_t out_sw = out_image.stride(2);
  const bool is_max = args.pool == PoolKind::Max, relu = args.relu;
  std::vector<acc_t> row(row_size), acc(channels);
  const PoolAxes axes = pool_axes(args);

  for (int64_t p = band.p0; p < band.p1; ++p) {
    const PoolWindow rows = pool_window(p, g.conv_h, axes.rows);
    const scalar_t* src = tile_data + (rows.start - tile_row0) * row_size;
    // 1. reduce the window's rows into `row`
    if (is_max) {
      for (int64_t i = 0; i < row_size; ++i) row[i] = static_cast<acc_t>(src[i]);
      for (int64_t r = rows.start + 1; r < rows.end; ++r) {
        src += row_size;
        for (int64_t i = 0; i < row_size; ++i) row[i] = max_nan(row[i], acc_t(src[i]));
      }
    } else if (relu) {
      std::fill(row.begin(), row.end(), acc_t(0));
      for (int64_t r = rows.start; r < rows.end; ++r, src += row_size) {
        for (int64_t q = 0; q < width; ++q) {
          for (int64_t c = 0; c < channels; ++c) {
            const acc_t v = static_cast<acc_t>(src[q * channels + c]) + bias_acc[c];
            row[q * channels + c] += v < acc_t(0) ? acc_t(0) : v;  // NaN stays, as in at::relu
          }
        }
      }
    } else {
      for (int64_t i = 0; i < row_size; ++i) row[i] = static_cast<acc_t>(src[i]);
      for (int64_t r = rows.start + 1; r < rows.end; ++r) {
        src += row_size;
        for (int64_t i = 0; i < row_size; ++i) row[i] += static_cast<acc_t>(src[i]);
      }
    }
    // 2. reduce each pooled column's window of `row`, then bias / ReLU / divisor
    for (int64_t q = 0; q < g.out_w; ++q) {
      const PoolWindow cols = pool_window(q, g.conv_w, axes.cols);
      const acc_t* col = row.data() + cols.start * channels;
      for (int64_t c = 0; c < channels; ++c) acc[c] = col[c];
      for (int64_t w = cols.start + 1; w < cols.end; ++w) {
        col += channels;
        if (is_max) {
          for (int64_t c = 0; c < channels; ++c) acc[c] = max_nan(acc[c], col[c]);
        } else {
          for (int64_t c = 0; c < channels; ++c) acc[c] += col[c];
        }
      }
      scalar_t* dst = out + p * out_sh + q * out_sw;
      if (is_max) {
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t v = acc[c] + bias_acc[c];
          dst[c * out_sc] = static_cast<scalar_t>(relu && v < acc_t(0) ? acc_t(0) : v);
        }
      } else {
        const acc_t cells = static_cast<acc_t>((rows.end - rows.start) * (cols.end - cols.start));
        const acc_t divisor = static_cast<acc_t>(rows.padded_size * cols.padded_size);
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t sum = relu ? acc[c] : acc[c] + cells * bias_acc[c];
          dst[c * out_sc] = static_cast<scalar_t>(sum / divisor);
        }
      }
    }
  }
}

// float32 average pooling (and max pooling of rows holding a NaN, which max_pool_float.h hands
// back) compiled for each instruction set's vectors: the baseline's 4-lane SSE is several times
// slower on wider machines (docs/kernels.md).
DEEPREBIRTH_CPU_VARIANTS(void, pool_rows_float,
                         (const at::Tensor& tile, int64_t tile_row0, const at::Tensor& bias,
                          const RowBand& band, const ConvPoolGeometry& g, const ConvPoolArgs& args,
                          const at::Tensor& out_image),
                         (pool_rows<float>(tile, tile_row0, bias, band, g, args, out_image)),
                         (pool_rows<float>(tile, tile_row0, bias, band, g, args, out_image)),
                         (pool_rows<float>(tile, tile_row0, bias, band, g, args, out_image)),
                         (pool_rows<float>(tile, tile_row0, bias, band, g, args, out_image)))

using PoolRowsFloat = decltype(pool_rows_float_for_cpu());

void pool_rows_float(const at::Tensor& tile, int64_t tile_row0, const at::Tensor& bias,
                     const RowBand& band, const ConvPoolGeometry& g, const ConvPoolArgs& args,
                     const at::Tensor& out_image) {
  static const PoolRowsFloat function = pool_rows_float_for_cpu();
  function(tile, tile_row0, bias, band, g, args, out_image);
}

}  // namespace

void bias_relu_pool_rows_cpu(const at::Tensor& tile, int64_t tile_row0, const at::Tensor& bias,
                             const RowBand& band, const ConvPoolGeometry& geometry,
                             const ConvPoolArgs& args, const at::Tensor& out_image) {
  TORCH_INTERNAL_ASSERT(tile.is_contiguous(at::MemoryFormat::ChannelsLast));
  TORCH_INTERNAL_ASSERT(tile_row0 <= band.c0 && band.c1 <= tile_row0 + tile.size(2));
  if (tile.scalar_type() == at::kFloat && args.pool == PoolKind::Max &&
      bias_relu_max_pool_float_rows(tile, tile_row0, bias, band, geometry, args, out_image)) {
    return;
  }
  if (tile.scalar_type() == at::kFloat) {
    return pool_rows_float(tile, tile_row0, bias, band, geometry, args, out_image);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, tile.scalar_type(), "conv_pool_cpu",
      [&] { pool_rows<scalar_t>(tile, tile_row0, bias, band, geometry, args, out_image); });
}

void bias_relu_pool_images_cpu(const at::Tensor& images, const at::Tensor& bias,
                               const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                               const at::Tensor& out) {
  const int64_t rows_per_task = std::max<int64_t>(1, (geometry.out_h + 3) / 4);
  const int64_t tasks_per_image = (geometry.out_h + rows_per_task - 1) / rows_per_task;
  at::parallel_for(0, images.size(0) * tasks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tasks_per_image, p0 = (task % tasks_per_image) * rows_per_task;
      // the epilogue reads the band's pooled and convolution rows, not its input rows, so the
      // convolution's kernel height does not matter here
      const RowBand band =
          row_band(p0, std::min(geometry.out_h, p0 + rows_per_task), geometry, args, 1);
      bias_relu_pool_rows_cpu(images[n].unsqueeze(0), 0, bias, band, geometry, args, out[n]);
    }
  });
}

}  // namespace deeprebirth::ops
