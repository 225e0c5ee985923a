// Row-band geometry of conv_pool (see conv_pool_tiling.h).
#include "ops/conv_pool/conv_pool_tiling.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace deeprebirth::ops {

RowBand row_band(int64_t p0, int64_t p1, const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                 int64_t kernel_h) {
  const PoolAxis rows = pool_axes(args).rows;
  RowBand band{p0, p1, 0, 0, 0, 0};
  band.c0 = pool_window(p0, geometry.conv_h, rows).start;
  band.c1 = pool_window(p1 - 1, geometry.conv_h, rows).end;
  const int64_t span = args.dilation[0] * (kernel_h - 1) + 1;
  band.in0 = band.c0 * args.stride[0] - args.padding[0];
  band.in1 = (band.c1 - 1) * args.stride[0] - args.padding[0] + span;
  return band;
}

at::Tensor band_input(const at::Tensor& x, const RowBand& band) {
  const int64_t height = x.size(2);
  const int64_t first = std::clamp<int64_t>(band.in0, 0, height);
  const int64_t last = std::clamp<int64_t>(band.in1, 0, height);
  if (last <= first) {  // every row of the band lies in the vertical padding
    return at::zeros({x.size(0), x.size(1), band.in1 - band.in0, x.size(3)}, x.options());
  }
  at::Tensor rows = x.slice(/*dim=*/2, first, last);
  const int64_t pad_top = first - band.in0, pad_bottom = band.in1 - last;
  if (pad_top == 0 && pad_bottom == 0) return rows;
  return at::constant_pad_nd(rows, {0, 0, pad_top, pad_bottom}, 0);
}

int64_t pooled_rows_per_band(const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                             int64_t out_channels, int64_t element_size, int64_t tile_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, out_channels * geometry.conv_w * element_size);
  const int64_t conv_rows = std::max<int64_t>(1, tile_bytes / row_bytes);
  // k + (rows - 1) * s convolution rows feed `rows` pooled rows.
  const int64_t rows = (conv_rows - args.pool_kernel[0]) / args.pool_stride[0] + 1;
  return std::clamp<int64_t>(rows, 1, geometry.out_h);
}

at::MemoryFormat conv_pool_memory_format(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace deeprebirth::ops
