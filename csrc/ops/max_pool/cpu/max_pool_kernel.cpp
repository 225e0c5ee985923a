// deeprebirth::max_pool2d's CPU kernel: channels_last float inputs through conv_pool's pooling
// epilogue (bias_relu_pool_images_cpu without bias or ReLU: vector max over whole pixels, a NaN
// in a window's rows handing them to the generic epilogue, which propagates it as ATen does), in
// parallel over bands of pooled rows; any other input through ATen's max_pool2d.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"
#include "ops/conv_pool/conv_pool.h"
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
  bias_relu_pool_images_cpu(x, at::Tensor(), g, args, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("max_pool2d", &max_pool2d_cpu); }

}  // namespace deeprebirth::ops
