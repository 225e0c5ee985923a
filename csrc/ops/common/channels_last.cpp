// Channels_last copies of few-channel images (see channels_last.h).
#include "ops/common/channels_last.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "ops/common/transpose.h"

namespace deeprebirth::ops {

at::Tensor channels_last_copy(const at::Tensor& x) {
  if (x.dim() != 4 || x.is_contiguous(at::MemoryFormat::ChannelsLast) || !x.is_contiguous() ||
      !x.device().is_cpu() || x.scalar_type() != at::kFloat || x.size(1) > 4 || x.numel() == 0) {
    return x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t channels = x.size(1), pixels = x.size(2) * x.size(3);
  const float* src = x.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  // over every image's pixels: each task interleaves a run of pixels of one image
  at::parallel_for(0, x.size(0) * pixels, 4096, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t n = begin / pixels, p0 = begin % pixels;
      const int64_t p1 = std::min(pixels, p0 + (end - begin));
      transpose_floats(src + n * channels * pixels + p0, pixels, channels, p1 - p0,
                       dst + (n * pixels + p0) * channels, channels);
      begin += p1 - p0;
    }
  });
  return out;
}

}  // namespace deeprebirth::ops
