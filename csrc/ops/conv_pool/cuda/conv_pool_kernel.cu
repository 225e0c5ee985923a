// CUDA kernel of deeprebirth::conv_pool: row-band tiled convolution (ATen / cuDNN) with a fused
// bias + ReLU + pooling kernel of our own.
//
// The pooled rows are split into bands so that one band's convolution tile (all images) stays
// under kTileBytes of GPU memory; each band is convolved with cuDNN (zero vertical padding on the
// band's input rows, see conv_pool_tiling.h), then bias_relu_pool_kernel reduces it into the
// output. The kernel reads the tile and writes the output through their strides, so any layout
// works; one thread computes one output element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"
#include "ops/conv_pool/cuda/current_stream.cuh"

namespace deeprebirth::ops {
namespace {

constexpr int64_t kTileBytes = int64_t{256} << 20;
constexpr int kThreads = 256;

struct PoolParams {
  int64_t channels, conv_h, conv_w, out_w;
  PoolAxes pool;
  int64_t tile_row0;       // convolution row of the tile's first row
  int64_t p0, rows;        // the band: pooled rows [p0, p0 + rows)
  int64_t tile_stride[4];  // n, c, h, w
  int64_t out_stride[4];   // n, c, h, w
  bool is_max, relu;
};

template <typename scalar_t>
__global__ void bias_relu_pool_kernel(const scalar_t* __restrict__ tile,
                                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                      int64_t total, PoolParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < total;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t q = index % p.out_w;
    const int64_t row = (index / p.out_w) % p.rows;
    const int64_t c = (index / (p.out_w * p.rows)) % p.channels;
    const int64_t n = index / (p.out_w * p.rows * p.channels);
    const int64_t pooled_row = p.p0 + row;
    const PoolWindow rows = pool_window(pooled_row, p.conv_h, p.pool.rows);
    const PoolWindow cols = pool_window(q, p.conv_w, p.pool.cols);
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    const scalar_t* plane = tile + n * p.tile_stride[0] + c * p.tile_stride[1];
    acc_t acc = p.is_max ? static_cast<acc_t>(plane[(rows.start - p.tile_row0) * p.tile_stride[2] +
                                                    cols.start * p.tile_stride[3]])
                         : acc_t(0);
    for (int64_t r = rows.start; r < rows.end; ++r) {
      const scalar_t* line = plane + (r - p.tile_row0) * p.tile_stride[2];
      for (int64_t w = cols.start; w < cols.end; ++w) {
        const acc_t v = static_cast<acc_t>(line[w * p.tile_stride[3]]);
        if (p.is_max) {
          acc = (v > acc || v != v) ? v : acc;
        } else {
          const acc_t biased = v + b;
          acc += p.relu && biased < acc_t(0) ? acc_t(0) : biased;
        }
      }
    }
    acc_t result;
    if (p.is_max) {
      result = acc + b;
      if (p.relu && result < acc_t(0)) result = acc_t(0);
    } else {
      result = acc / static_cast<acc_t>(rows.padded_size * cols.padded_size);
    }
    out[n * p.out_stride[0] + c * p.out_stride[1] + pooled_row * p.out_stride[2] +
        q * p.out_stride[3]] = static_cast<scalar_t>(result);
  }
}

void launch_bias_relu_pool(const at::Tensor& tile, const at::Tensor& bias, const RowBand& band,
                           const ConvPoolGeometry& g, const ConvPoolArgs& args,
                           const at::Tensor& out) {
  PoolParams p{};
  p.channels = out.size(1);
  p.conv_h = g.conv_h;
  p.conv_w = g.conv_w;
  p.out_w = g.out_w;
  p.pool = pool_axes(args);
  p.tile_row0 = band.c0;
  p.p0 = band.p0;
  p.rows = band.p1 - band.p0;
  for (int d = 0; d < 4; ++d) {
    p.tile_stride[d] = tile.stride(d);
    p.out_stride[d] = out.stride(d);
  }
  p.is_max = args.pool == PoolKind::Max;
  p.relu = args.relu;
  const int64_t total = out.size(0) * p.channels * p.rows * p.out_w;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  const cudaStream_t stream = current_cuda_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tile.scalar_type(), "conv_pool_cuda", [&] {
        bias_relu_pool_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
            tile.const_data_ptr<scalar_t>(),
            bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), total, p);
      });
  const cudaError_t status = cudaGetLastError();
  TORCH_CHECK(status == cudaSuccess,
              "conv_pool: CUDA kernel launch failed: ", cudaGetErrorString(status));
}

at::Tensor conv_pool_cuda(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                          c10::string_view pool, c10::IntArrayRef pool_kernel,
                          c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
                          bool ceil_mode, bool relu) {
  const ConvPoolArgs args =
      make_conv_pool_args(stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                          pool_padding, ceil_mode, relu);
  const ConvPoolGeometry g = check_conv_pool_args(x, w, b, args);
  const c10::DeviceGuard device_guard(x.device());
  const int64_t batch = x.size(0), channels = w.size(0);
  at::Tensor out = at::empty({batch, channels, g.out_h, g.out_w},
                             x.options().memory_format(conv_pool_memory_format(x)));
  if (batch == 0) return out;
  const at::Tensor bias = b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
  const int64_t band_rows =
      pooled_rows_per_band(g, args, channels * batch, x.element_size(), kTileBytes);
  const std::array<int64_t, 2> band_padding{0, padding[1]};  // rows come padded by band_input
  for (int64_t p0 = 0; p0 < g.out_h; p0 += band_rows) {
    const RowBand band = row_band(p0, std::min(g.out_h, p0 + band_rows), g, args, w.size(2));
    const at::Tensor tile = at::conv2d(band_input(x, band), w, /*bias=*/{}, stride,
                                       c10::IntArrayRef(band_padding), dilation, groups);
    launch_bias_relu_pool(tile, bias, band, g, args, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CUDA, m) {
  m.impl("conv_pool", &conv_pool_cuda);
  m.impl("conv_pool_backward", &conv_pool_backward_recompute);
}

}  // namespace deeprebirth::ops
