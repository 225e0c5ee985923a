// CPU kernel of deeprebirth::conv_pool: row-band tiled convolution with a fused bias + ReLU +
// pooling epilogue; the full pre-pool tensor never exists.
//
// Float32 layers that one of our own convolutions takes run the thread-band schedule:
// - DirectBandConvolution: at most 4 input channels (GoogLeNet conv1, the ResNet-50 stem);
// - WinogradConvolution: 3x3 stride-1 layers with C_in >= 8 (GoogLeNet conv2) whose input and
//   weight are finite (a NaN or an infinity would spread over its 2x2 output blocks).
// Each thread convolves its own bands of one image, pools each while it sits in L2, and carries
// the rows that neighbouring bands share.
// Everything else convolves with oneDNN (on one weight packed per call, BandConvolution) or
// at::conv2d, in one of three schedules:
// - banded: at::parallel_for over (image, band of pooled rows). Each task convolves only the input
//   rows its band needs (one thread, channels-last), pools the tile and frees it. Used when there
//   are at least as many images as threads and an image's convolution output is larger than one
//   tile (the memory and cache win).
// - sequential: fewer images than threads (batch 1 on two threads). The bands run one after the
//   other, each convolved by oneDNN on all threads, then pooled by all threads (oneDNN on one
//   thread per band is slower at batch 1: each thread would hold a whole band's work alone).
// - whole: one multi-threaded convolution over the batch, then the same epilogue in parallel. Used
//   for small problems, where per-band convolution calls would cost more than they save.
// All convolve into channels-last tiles (the fast layout for the epilogue and for oneDNN here) and
// write the output in conv_pool_memory_format(x).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"
#include "ops/conv_pool/cpu/band_convolution.h"
#include "ops/conv_pool/cpu/bias_relu_pool.h"
#include "ops/conv_pool/cpu/direct_band_convolution.h"
#include "ops/conv_pool/cpu/winograd_convolution.h"

namespace deeprebirth::ops {
namespace {

// Below this many convolution-output bytes per image, banding has nothing to save.
constexpr int64_t kMinBandedImageBytes = 2 * kCpuTileBytes;
// Convolution-output bytes per band of the sequential schedule. Its bands run oneDNN on all
// threads, which loses parallel efficiency on short bands; sizes around this one are alike
// (docs/kernels.md).
constexpr int64_t kSequentialTileBytes = 1536 * 1024;

// The band of at most `band_rows` pooled rows starting at pooled row p0.
RowBand band_at(int64_t p0, int64_t band_rows, const ConvPoolGeometry& g, const ConvPoolArgs& args,
                const at::Tensor& w) {
  return row_band(p0, std::min(g.out_h, p0 + band_rows), g, args, w.size(2));
}

// The band convolution of a call, its weight packed for the input shape of the first band.
BandConvolution band_convolution(const at::Tensor& x, const at::Tensor& w,
                                 const ConvPoolGeometry& g, const ConvPoolArgs& args,
                                 int64_t band_rows) {
  const RowBand first = band_at(0, band_rows, g, args, w);
  const std::vector<int64_t> first_shape{1, x.size(1), first.in1 - first.in0, x.size(3)};
  return BandConvolution(w, args, first_shape);
}

void conv_pool_banded(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                      const ConvPoolGeometry& g, const ConvPoolArgs& args, int64_t band_rows,
                      const at::Tensor& out) {
  const int64_t bands = (g.out_h + band_rows - 1) / band_rows;
  const int64_t tasks = x.size(0) * bands;
  const BandConvolution convolve = band_convolution(x, w, g, args, band_rows);
  const at::ThreadLocalState caller_state;  // grad mode and dispatch keys for the workers
  // Threads take bands from a shared counter rather than a fixed half each: a thread the OS
  // preempts (the cores are shared) or a short last band does not leave the other one idle.
  std::atomic<int64_t> next_task{0};
  const int64_t workers = std::min<int64_t>(tasks, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t task = next_task++; task < tasks; task = next_task++) {
      const int64_t n = task / bands, p0 = (task % bands) * band_rows;
      const RowBand band = band_at(p0, band_rows, g, args, w);
      const at::Tensor tile = convolve(band_input(x.slice(0, n, n + 1), band));
      bias_relu_pool_rows_cpu(tile, band.c0, bias, band, g, args, out[n]);
    }
  });
}

void conv_pool_sequential(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                          const ConvPoolGeometry& g, const ConvPoolArgs& args, int64_t band_rows,
                          const at::Tensor& out) {
  const BandConvolution convolve = band_convolution(x, w, g, args, band_rows);
  for (int64_t n = 0; n < x.size(0); ++n) {
    const at::Tensor image = x.slice(0, n, n + 1);
    for (int64_t p0 = 0; p0 < g.out_h; p0 += band_rows) {
      const RowBand band = band_at(p0, band_rows, g, args, w);
      const at::Tensor tile = convolve(band_input(image, band));
      at::parallel_for(band.p0, band.p1, 1, [&](int64_t begin, int64_t end) {
        const RowBand rows = row_band(begin, end, g, args, w.size(2));
        bias_relu_pool_rows_cpu(tile, band.c0, bias, rows, g, args, out[n]);
      });
    }
  }
}

// The schedule of our own convolutions (DirectBandConvolution, WinogradConvolution: rows of one
// image into a buffer, on the calling thread), any batch. Each image is split into segments of
// pooled rows, enough for every thread to take two at batch 1; a thread takes (image, segment)
// tasks from a shared counter and walks its segment in bands, keeping the convolution rows two
// neighbouring bands share (pooling windows overlap) instead of computing them again, so only the
// segment boundaries repeat work. One band tile (at most Convolution::kBandTileBytes, at least the
// rows of one pooled row) and one scratch buffer per thread.
template <typename Convolution>
void conv_pool_thread_bands(const Convolution& convolve, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& bias, const ConvPoolGeometry& g,
                            const ConvPoolArgs& args, const at::Tensor& out) {
  const int64_t batch = x.size(0), channels = w.size(0), row_size = g.conv_w * channels;
  const int64_t band_rows =
      pooled_rows_per_band(g, args, channels, x.element_size(), Convolution::kBandTileBytes);
  const int64_t tile_rows =
      std::min(g.conv_h, (band_rows - 1) * args.pool_stride[0] + args.pool_kernel[0]);
  const int64_t threads = at::get_num_threads();
  const int64_t wanted_segments = std::min(g.out_h, (2 * threads + batch - 1) / batch);
  const int64_t segment_rows = (g.out_h + wanted_segments - 1) / wanted_segments;
  const int64_t segments = (g.out_h + segment_rows - 1) / segment_rows;
  const int64_t tasks = batch * segments;
  const at::ThreadLocalState caller_state;
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, std::min(tasks, threads), 1, [&](int64_t, int64_t) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    const at::Tensor tile = at::empty({1, channels, tile_rows, g.conv_w},
                                      x.options().memory_format(at::MemoryFormat::ChannelsLast));
    float* tile_data = tile.mutable_data_ptr<float>();
    std::vector<float> scratch;
    for (int64_t task = next_task++; task < tasks; task = next_task++) {
      const int64_t n = task / segments, s0 = (task % segments) * segment_rows;
      const int64_t s1 = std::min(g.out_h, s0 + segment_rows);
      const at::Tensor image = x[n];
      int64_t held0 = 0, held1 = 0;  // the convolution rows in the tile
      for (int64_t p0 = s0; p0 < s1; p0 += band_rows) {
        const RowBand band = row_band(p0, std::min(s1, p0 + band_rows), g, args, w.size(2));
        const int64_t kept = std::max<int64_t>(0, held1 - band.c0);  // bands only move down
        if (kept > 0) {
          std::memmove(tile_data, tile_data + (band.c0 - held0) * row_size,
                       kept * row_size * sizeof(float));
        }
        convolve(image, band.c0 + kept, band.c1, tile_data + kept * row_size, scratch);
        held0 = band.c0;
        held1 = band.c1;
        bias_relu_pool_rows_cpu(tile.narrow(2, 0, band.c1 - band.c0), band.c0, bias, band, g, args,
                                out[n]);
      }
    }
  });
}

void conv_pool_whole(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                     const ConvPoolGeometry& g, const ConvPoolArgs& args, const at::Tensor& out) {
  bias_relu_pool_images_cpu(conv_rows(x, w, args, args.padding[0]), bias, g, args, out);
}

at::Tensor conv_pool_cpu(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         c10::string_view pool, c10::IntArrayRef pool_kernel,
                         c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
                         bool ceil_mode, bool relu) {
  const ConvPoolArgs args =
      make_conv_pool_args(stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                          pool_padding, ceil_mode, relu);
  const ConvPoolGeometry g = check_conv_pool_args(x, w, b, args);
  const int64_t batch = x.size(0), channels = w.size(0);
  at::Tensor out = at::empty({batch, channels, g.out_h, g.out_w},
                             x.options().memory_format(conv_pool_memory_format(x)));
  if (batch == 0) return out;
  const at::Tensor bias = b.has_value() && b->defined() ? b->contiguous() : at::Tensor();

  const int64_t image_bytes = channels * g.conv_h * g.conv_w * x.element_size();
  const int64_t band_rows =
      pooled_rows_per_band(g, args, channels, x.element_size(), kCpuTileBytes);
  const int64_t threads = at::get_num_threads();
  const bool bandable = image_bytes >= kMinBandedImageBytes;
  if (DirectBandConvolution::applies(w, args)) {
    conv_pool_thread_bands(DirectBandConvolution(w, args, g.conv_w), x, w, bias, g, args, out);
  } else if (WinogradConvolution::applies(w, args) && WinogradConvolution::exact_for(x, w)) {
    // in passes over groups of output channels, each with its own transformed weight
    const int64_t group = WinogradConvolution::channels_per_pass(w, batch * image_bytes);
    for (int64_t c0 = 0; c0 < channels; c0 += group) {
      const int64_t size = std::min(group, channels - c0);
      const at::Tensor w_group = w.narrow(0, c0, size);
      const at::Tensor bias_group = bias.defined() ? bias.narrow(0, c0, size) : bias;
      conv_pool_thread_bands(WinogradConvolution(w_group, args, g.conv_w), x, w_group, bias_group,
                             g, args, out.narrow(1, c0, size));
    }
  } else if (bandable && batch < threads) {  // equal bands, one at a time
    const int64_t bands = (image_bytes + kSequentialTileBytes - 1) / kSequentialTileBytes;
    conv_pool_sequential(x, w, bias, g, args, (g.out_h + bands - 1) / bands, out);
  } else if (bandable && band_rows < g.out_h) {
    conv_pool_banded(x, w, bias, g, args, band_rows, out);
  } else {
    conv_pool_whole(x, w, bias, g, args, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("conv_pool", &conv_pool_cpu); }

}  // namespace deeprebirth::ops
