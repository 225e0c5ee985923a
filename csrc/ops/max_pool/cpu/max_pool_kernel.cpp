// deeprebirth::max_pool2d's CPU kernel: channels_last float inputs through conv_pool's pooling
// epilogue (bias_relu_pool_rows_cpu without bias or ReLU: vector max over whole pixels, a NaN in
// a window's rows handing them to the generic epilogue, which propagates it as ATen does), in
// parallel over bands of pooled rows; any other input through ATen's max_pool2d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/common/arg_checks.h"
#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"
#include "ops/conv_pool/cpu/bias_relu_pool.h"
#include "ops/max_pool/max_pool.h"

namespace deeprebirth::ops {
namespace {

at::Tensor max_pool2d_cpu(const at::Tensor& x, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode) {
  if (!max_pool2d_fast_path(x, kernel_size, stride, padding, ceil_mode)) {
    return at::max_pool2d(x, kernel_size, stride, padding, {1, 1}, ceil_mode);
  }
  // the pooling of conv_pool over a 1x1 identity "convolution": its rows are x's rows
  static constexpr int64_t kOne[2] = {1, 1}, kZero[2] = {0, 0};
  const ConvPoolArgs args{kOne,        kZero,  kOne,    1,         PoolKind::Max,
                          kernel_size, stride, padding, ceil_mode, false};
  ConvPoolGeometry g{x.size(2), x.size(3), 0, 0};
  g.out_h = pool_output_size(g.conv_h, kernel_size[0], stride[0], padding[0], ceil_mode);
  g.out_w = pool_output_size(g.conv_w, kernel_size[1], stride[1], padding[1], ceil_mode);
  at::Tensor out = at::empty({x.size(0), x.size(1), g.out_h, g.out_w},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  // a few bands per image so that both threads of a batch-1 call have rows to pool
  const int64_t rows_per_task = std::max<int64_t>(1, (g.out_h + 3) / 4);
  const int64_t tasks_per_image = (g.out_h + rows_per_task - 1) / rows_per_task;
  const at::Tensor no_bias;
  at::parallel_for(0, x.size(0) * tasks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tasks_per_image, p0 = (task % tasks_per_image) * rows_per_task;
      const RowBand band = row_band(p0, std::min(g.out_h, p0 + rows_per_task), g, args, 1);
      bias_relu_pool_rows_cpu(x[n].unsqueeze(0), 0, no_bias, band, g, args, out[n]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("max_pool2d", &max_pool2d_cpu); }

}  // namespace deeprebirth::ops
