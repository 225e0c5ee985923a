// CPU kernel of deeprebirth::winograd_pack / winograd_conv2d: whole images in equal runs of output
// tiles (or shares of the output channels), each part convolved by WinogradConvolution straight
// into the output with its bias and ReLU (see winograd_conv.h).
#include "ops/winograd_conv/cpu/winograd_conv_kernel.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/conv_pool/cpu/winograd_convolution.h"
#include "ops/winograd_conv/winograd_conv.h"

namespace deeprebirth::ops {

bool winograd_conv_applies(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                           c10::IntArrayRef dilation, int64_t groups) {
  const auto is_cpu_float = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided;
  };
  return is_cpu_float(x) && is_cpu_float(w) && x.dim() == 4 &&
         WinogradConvolution::suits(w, stride, dilation, groups) && x.size(1) == w.size(1);
}

at::Tensor winograd_pack_if_finite(const at::Tensor& w, int64_t tile) {
  return WinogradConvolution::finite(w) ? WinogradConvolution::transform(w, tile) : at::Tensor();
}

bool winograd_input_finite(const at::Tensor& x) { return WinogradConvolution::finite(x); }

namespace {

// Whether the threads should split a call's output channels rather than its tiles (both compute
// the same values). Every chunk of transformed input (WinogradConvolution) is multiplied by the
// part of the transformed weight U its task computes, so U passes through a core once per chunk:
// split by tiles (two parts of each image per thread while there are fewer images than threads),
// each thread reads all of U once per chunk of its parts; split by output channels, a share of U
// once per chunk of the whole image, at the cost of transforming the whole input on every thread
// (a small part of the work next to the products). The channel split is taken where it at least
// halves a thread's reads of U: small images of many channels, whose U outweighs the image
// (docs/kernels.md, "Winograd at batch 1"). `parts` is the tile split's parts per image, `tiles`
// an image's output blocks (2x2 or 4x4).
bool split_output_channels(const WinogradConvolution& convolve, int64_t batch, int64_t threads,
                           int64_t parts, int64_t tiles) {
  if (batch >= threads || convolve.blocks() < threads) return false;
  const int64_t chunk = convolve.tiles_per_chunk();
  const auto chunks = [&](int64_t n) { return (n + chunk - 1) / chunk; };
  // U's passes per thread, in units of U / threads
  const int64_t by_tiles = threads * (parts / threads) * chunks((tiles + parts - 1) / parts);
  const int64_t by_channels = chunks(tiles);
  return 2 * by_channels <= by_tiles;
}

}  // namespace

at::Tensor& winograd_conv2d_out_cpu(const at::Tensor& x, const at::Tensor& packed_w,
                                    const std::optional<at::Tensor>& b, int64_t out_channels,
                                    c10::IntArrayRef padding, bool relu, at::Tensor& out) {
  const auto size = check_winograd_conv2d_args(x, packed_w, b, out_channels, padding);
  check_winograd_out(out, x, out_channels, size);
  const int64_t batch = x.size(0), out_h = size.first, out_w = size.second;
  if (batch == 0) return out;
  const WinogradConvolution convolve(packed_w, out_channels, padding[0], padding[1], out_w);
  const at::Tensor bias = b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
  const float* bias_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t tile = convolve.tile();
  const int64_t tiles = (out_h + tile - 1) / tile * ((out_w + tile - 1) / tile);  // per image
  const int64_t threads = at::get_num_threads();
  // Equal parts of an image's tiles (row-major), two per thread at batch 1, so that a thread the
  // OS preempts (the cores are shared) holds back half as much.
  const int64_t parts = std::clamp<int64_t>((2 * threads + batch - 1) / batch, 1, tiles);
  if (split_output_channels(convolve, batch, threads, parts, tiles)) {
    // Each thread all of the image's tiles for its share of the output channel blocks: it reads
    // only its share of the transformed weight, and transforms the whole input itself.
    const int64_t blocks = convolve.blocks();
    at::parallel_for(0, batch * threads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / threads, part = task % threads;
        convolve(x[n], 0, out_h, out_data + n * out.stride(0), scratch, bias_data, relu,
                 out.stride(3), blocks * part / threads, blocks * (part + 1) / threads);
      }
    });
    return out;
  }
  at::parallel_for(0, batch * parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / parts, part = task % parts;
      convolve(x[n], 0, out_h, out_data + n * out.stride(0), scratch, bias_data, relu,
               out.stride(3), 0, -1, tiles * part / parts, tiles * (part + 1) / parts);
    }
  });
  return out;
}

at::Tensor winograd_conv2d_cpu(const at::Tensor& x, const at::Tensor& packed_w,
                               const std::optional<at::Tensor>& b, int64_t out_channels,
                               c10::IntArrayRef padding, bool relu) {
  const auto [out_h, out_w] = check_winograd_conv2d_args(x, packed_w, b, out_channels, padding);
  at::Tensor out = at::empty({x.size(0), out_channels, out_h, out_w},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  winograd_conv2d_out_cpu(x, packed_w, b, out_channels, padding, relu, out);
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? out : out.contiguous();
}

namespace {

at::Tensor winograd_pack_cpu(const at::Tensor& w, int64_t tile) {
  TORCH_CHECK(w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 && w.size(0) > 0 && w.size(1) > 0,
              "winograd_pack: expected a weight of shape (C_out, C_in, 3, 3), but got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == at::kFloat, "winograd_pack: expected a float32 weight, but got ",
              w.dtype());
  at::Tensor packed = winograd_pack_if_finite(w, tile);
  TORCH_CHECK(packed.defined(),
              "winograd_pack: the weight holds an infinity or NaN, which Winograd's transforms "
              "would spread over whole blocks of outputs; use torch.nn.functional.conv2d");
  return packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) {
  m.impl("winograd_pack", &winograd_pack_cpu);
  m.impl("winograd_conv2d", &winograd_conv2d_cpu);
  m.impl("winograd_conv2d.out", &winograd_conv2d_out_cpu);
}

}  // namespace deeprebirth::ops
