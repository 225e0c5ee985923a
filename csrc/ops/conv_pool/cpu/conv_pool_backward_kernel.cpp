// CPU kernel of deeprebirth::conv_pool_backward: recomputes the convolution one row band at a
// time (the same bands as the forward kernel), so the backward pass, like the forward one, never
// holds the full pre-pool tensor.
//
// For each image and band: convolve the band's input rows (with bias), route the band's output
// gradient back through the pooling and ReLU into a band-sized gradient tile (max: to the window's
// arg-max, skipped when ReLU clipped it; avg: spread over the window's cells, masked by ReLU), then
// at::convolution_backward of that tile gives the band's share of grad_w, grad_b and of grad_x's
// rows (bands overlap by the convolution halo, so those rows accumulate). Every pooled output
// belongs to exactly one band, so the shares sum to the full gradients.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"
#include "ops/conv_pool/cpu/bias_relu_pool.h"

namespace deeprebirth::ops {
namespace {

// Adds the gradient of pooled rows [band.p0, band.p1) of one image to `grad_tile`.
// Preconditions: `tile` (C, rows, conv_w) contiguous holds relu's input (convolution + bias) for
// rows band.c0 ..; `grad_tile` is a zero tensor of the same shape; `grad_image` is (C, out_h,
// out_w) with any strides.
template <typename scalar_t>
void pool_backward_rows(const at::Tensor& tile, const at::Tensor& grad_image, const RowBand& band,
                        const ConvPoolGeometry& g, const ConvPoolArgs& args,
                        const at::Tensor& grad_tile) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = tile.size(1), width = tile.size(2);
  const scalar_t* y = tile.const_data_ptr<scalar_t>();
  scalar_t* gy = grad_tile.mutable_data_ptr<scalar_t>();
  const scalar_t* go = grad_image.const_data_ptr<scalar_t>();
  const int64_t go_sc = grad_image.stride(0), go_sh = grad_image.stride(1);
  const int64_t go_sw = grad_image.stride(2);
  const PoolAxes axes = pool_axes(args);
  at::parallel_for(0, tile.size(0), 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const scalar_t* plane = y + c * rows * width;
      scalar_t* grad_plane = gy + c * rows * width;
      for (int64_t p = band.p0; p < band.p1; ++p) {
        const PoolWindow rw = pool_window(p, g.conv_h, axes.rows);
        for (int64_t q = 0; q < g.out_w; ++q) {
          const PoolWindow cw = pool_window(q, g.conv_w, axes.cols);
          const acc_t grad = static_cast<acc_t>(go[c * go_sc + p * go_sh + q * go_sw]);
          if (args.pool == PoolKind::Max) {
            int64_t best = (rw.start - band.c0) * width + cw.start;
            for (int64_t r = rw.start; r < rw.end; ++r) {
              for (int64_t col = cw.start; col < cw.end; ++col) {
                const int64_t at = (r - band.c0) * width + col;
                if (plane[at] > plane[best] || plane[at] != plane[at]) best = at;
              }
            }
            if (args.relu && !(plane[best] > scalar_t(0))) continue;  // ReLU clipped the max
            grad_plane[best] = static_cast<scalar_t>(grad_plane[best] + grad);
          } else {
            const acc_t share = grad / static_cast<acc_t>(rw.padded_size * cw.padded_size);
            for (int64_t r = rw.start; r < rw.end; ++r) {
              for (int64_t col = cw.start; col < cw.end; ++col) {
                const int64_t at = (r - band.c0) * width + col;
                if (args.relu && !(plane[at] > scalar_t(0))) continue;
                grad_plane[at] = static_cast<scalar_t>(grad_plane[at] + share);
              }
            }
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
  const ConvPoolArgs args =
      make_conv_pool_args(stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                          pool_padding, ceil_mode, relu);
  const ConvPoolGeometry g = check_conv_pool_grad_args(grad, x, w, b, args);
  const int64_t batch = x.size(0), channels = w.size(0), height = x.size(2);
  at::Tensor grad_x = at::zeros(x.sizes(), x.options().memory_format(conv_pool_memory_format(x)));
  at::Tensor grad_w = at::zeros(w.sizes(), w.options().memory_format(conv_pool_memory_format(w)));
  at::Tensor grad_b = at::zeros({channels}, w.options());
  const int64_t band_rows =
      pooled_rows_per_band(g, args, channels, x.element_size(), kCpuTileBytes);
  const std::array<int64_t, 2> band_padding{0, padding[1]};  // band_input adds the zero rows
  for (int64_t n = 0; n < batch; ++n) {
    const at::Tensor image = x.slice(0, n, n + 1);
    for (int64_t p0 = 0; p0 < g.out_h; p0 += band_rows) {
      const RowBand band = row_band(p0, std::min(g.out_h, p0 + band_rows), g, args, w.size(2));
      const at::Tensor input = band_input(image, band);
      const at::Tensor tile =
          at::conv2d(input, w, b, stride, c10::IntArrayRef(band_padding), dilation, groups)
              .contiguous();
      at::Tensor grad_tile = at::zeros_like(tile);
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kBFloat16, at::kHalf, tile.scalar_type(), "conv_pool_backward_cpu",
          [&] { pool_backward_rows<scalar_t>(tile[0], grad[n], band, g, args, grad_tile[0]); });
      auto [grad_input, grad_w_band, grad_b_band] = at::convolution_backward(
          grad_tile, input, w, c10::IntArrayRef{channels}, stride, c10::IntArrayRef(band_padding),
          dilation, /*transposed=*/false, {0, 0}, groups, {true, true, true});
      grad_w.add_(grad_w_band);
      grad_b.add_(grad_b_band);
      const int64_t first = std::clamp<int64_t>(band.in0, 0, height);
      const int64_t last = std::clamp<int64_t>(band.in1, 0, height);
      if (last > first) {
        grad_x[n]
            .slice(1, first, last)
            .add_(grad_input[0].slice(1, first - band.in0, last - band.in0));
      }
    }
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("conv_pool_backward", &conv_pool_backward_cpu); }

}  // namespace deeprebirth::ops
