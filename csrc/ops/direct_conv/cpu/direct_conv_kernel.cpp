// CPU kernel of deeprebirth::direct_conv (float32).
//
// For each image the input is copied once into a zero-bordered buffer (when padded), so the inner
// loops need no bounds checks. A task computes whole output rows of one 16-channel block: tiles of
// up to 8, 4 or 2 output pixels (by instruction set; from several rows when the output is narrow)
// hold 16 channels each in vector registers and accumulate input value x weight vector over
// (C_in, kh, kw), starting from the bias; the tile is then ReLU'd and written out channel by
// channel (NCHW). The weight block is read once per tile from
// direct_conv_pack's layout, in the order the loops use it. at::parallel_for splits the
// (image, block, row) tasks only when a chunk keeps enough arithmetic to pay for a thread.
// direct_conv_cat runs the same loop per branch, each writing its channels of one output.
// The row loop is compiled for AVX-512, AVX2 + FMA and baseline x86-64 (GCC or Clang on
// x86-64; elsewhere once, for the compiler's target), each with as many accumulators as its
// registers hold, and chosen by cpu_isa() (ops/common/cpu_isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/direct_conv/cpu/direct_conv_tile.h"
#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {
namespace {

// Multiply-accumulates per parallel chunk below which a chunk is not split further: a thread
// costs a few microseconds to wake, the time of about 100K multiply-accumulates here.
constexpr int64_t kMinChunkMacs = 1 << 17;
// Output pixels per task: a task is one block's rows, as many as make this many pixels.
constexpr int64_t kTaskPixels = 8;

// Output rows [first_row, first_row + rows) of one 16-channel block of one image, whose
// (padded) input planes (C_in, in_h, in_w) start at `input`.
struct RowTask : TileWindow {
  const float* input;
  const float* bias;  // the block's bias values (`lanes` of them), or null
  int64_t first_row, rows, out_w;
  int64_t lanes;  // the block's output channels (16, fewer in the last block)
  bool relu;
  float* out;     // the first row of the block's first output channel
  int64_t plane;  // the distance between output channels
};

// The largest power of two <= min(n, limit).
inline int64_t power_of_two_at_most(int64_t n, int64_t limit) {
  int64_t p = 1;
  while (p * 2 <= n && p * 2 <= limit) p *= 2;
  return p;
}

// tile<Width, R, P> for the run-time size r x p (powers of two, r * p <= TilePixels): every
// size the row loop below asks for is compiled with its accumulators in registers.
template <int Width, int R, int P>
__attribute__((always_inline)) inline void tile_of_width(int64_t p, const RowTask& t,
                                                         const float* bias, const float* at,
                                                         float (*out)[kDirectConvBlock]) {
  if constexpr (P >= 1) {
    if (p == P) return tile<Width, R, P>(t, bias, at, out[0], kDirectConvBlock);
    tile_of_width<Width, R, P / 2>(p, t, bias, at, out);
  }
}

template <int Width, int TilePixels, int R = TilePixels>
__attribute__((always_inline)) inline void tile_of_size(int64_t r, int64_t p, const RowTask& t,
                                                        const float* bias, const float* at,
                                                        float (*out)[kDirectConvBlock]) {
  if constexpr (R >= 1) {
    if (r == R) return tile_of_width<Width, R, TilePixels / R>(p, t, bias, at, out);
    tile_of_size<Width, TilePixels, R / 2>(r, p, t, bias, at, out);
  }
}

// The task's rows in tiles of up to `TilePixels` pixels (from several rows when the output is
// narrower, as in the late layers of small networks), written channel by channel.
// TilePixels x 16 / Width accumulators cover the latency of the fused multiply-adds as long as
// they fit in the vector registers beside the weight vectors.
template <int Width, int TilePixels>
__attribute__((always_inline)) inline void rows_in_tiles(const RowTask& t) {
  const int64_t first_row = t.first_row, rows = t.rows, out_w = t.out_w, lanes = t.lanes,
                plane = t.plane;
  const bool relu = t.relu;
  float* out = t.out;
  float bias[kDirectConvBlock] = {};
  for (int64_t l = 0; t.bias != nullptr && l < lanes; ++l) bias[l] = t.bias[l];
  float tile_out[TilePixels][kDirectConvBlock];
  for (int64_t y = 0; y < rows;) {
    const int64_t r = power_of_two_at_most(rows - y, TilePixels);
    const float* input = t.input + (first_row + y) * t.stride_h * t.in_w;
    for (int64_t x = 0; x < out_w;) {
      const int64_t p = power_of_two_at_most(out_w - x, TilePixels / r);
      const float* at = input + x * t.stride_w;
      tile_of_size<Width, TilePixels>(r, p, t, bias, at, tile_out);
      for (int64_t l = 0; l < lanes; ++l) {
        for (int64_t i = 0; i < r; ++i) {
          float* dst = out + l * plane + (y + i) * out_w + x;
          for (int64_t q = 0; q < p; ++q) {
            const float v = tile_out[i * p + q][l];
            dst[q] = relu ? std::max(v, 0.0f) : v;
          }
        }
      }
      x += p;
    }
    y += r;
  }
}

using RowsFunction = void (*)(const RowTask&);

// Eight accumulator registers each: 8 pixels x 1 AVX-512 vector (of 32 registers), 4 pixels x 2
// AVX2 vectors or 2 pixels x 4 SSE vectors (of 16); NEON has 32 registers: 16 accumulators.
DEEPREBIRTH_CPU_VARIANTS(void, rows, (const RowTask& t), (rows_in_tiles<16, 8>(t)),
                         (rows_in_tiles<8, 4>(t)), (rows_in_tiles<4, 2>(t)),
                         (rows_in_tiles<4, 4>(t)))

RowsFunction rows_kernel() {
  static const RowsFunction kernel = rows_for_cpu();
  return kernel;
}

// x with `pad_h` / `pad_w` zero rows / columns on each side, contiguous (x itself when unpadded
// and contiguous). Plain loops: on the small inputs this kernel is for, an ATen pad costs
// several times the copy.
at::Tensor zero_bordered(const at::Tensor& x, int64_t pad_h, int64_t pad_w) {
  const at::Tensor dense = x.contiguous();
  if (pad_h == 0 && pad_w == 0) return dense;
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  const int64_t padded_h = h + 2 * pad_h, padded_w = w + 2 * pad_w;
  at::Tensor out = at::empty({x.size(0), x.size(1), padded_h, padded_w}, x.options());
  const float* src = dense.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t plane = 0; plane < planes; ++plane) {
    std::fill_n(dst, pad_h * padded_w, 0.0f);
    dst += pad_h * padded_w;
    for (int64_t r = 0; r < h; ++r, src += w, dst += padded_w) {
      std::fill_n(dst, pad_w, 0.0f);
      std::copy_n(src, w, dst + pad_w);
      std::fill_n(dst + pad_w + w, pad_w, 0.0f);
    }
    std::fill_n(dst, pad_h * padded_w, 0.0f);
    dst += pad_h * padded_w;
  }
  return out;
}

// Writes relu?(conv2d(x, w, b)) into channels [first_channel, first_channel + C_out) of `out`
// (contiguous NCHW, the size g implies in every other dimension). Arguments already checked.
void direct_conv_into(const at::Tensor& x, const at::Tensor& packed_w,
                      const std::optional<at::Tensor>& b, const DirectConvGeometry& g,
                      c10::IntArrayRef stride, c10::IntArrayRef padding, bool relu, at::Tensor& out,
                      int64_t first_channel) {
  TORCH_CHECK(x.scalar_type() == at::kFloat,
              "direct_conv: expected float32 tensors on the CPU, but got x of dtype ",
              x.scalar_type());
  if (g.batch == 0) return;
  const at::Tensor input = zero_bordered(x, padding[0], padding[1]);
  const at::Tensor weight = packed_w.contiguous();
  const int64_t blocks = weight.size(0);
  const bool has_bias = b.has_value() && b->defined();
  const at::Tensor bias = has_bias ? b->contiguous() : at::Tensor();

  const int64_t in_h = input.size(2), in_w = input.size(3);
  const int64_t block_weights = g.in_channels * g.kernel_h * g.kernel_w * kDirectConvBlock;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t out_image = out.size(1) * plane;
  // A task: one block's output rows for one image, as many as make kTaskPixels pixels.
  const int64_t task_rows = std::min(g.out_h, std::max<int64_t>(1, kTaskPixels / g.out_w));
  const int64_t row_groups = (g.out_h + task_rows - 1) / task_rows;
  const int64_t task_macs = task_rows * g.out_w * block_weights;
  const int64_t tasks = g.batch * blocks * row_groups;
  const float* input_data = input.data_ptr<float>();
  const float* weight_data = weight.data_ptr<float>();
  const float* bias_data = has_bias ? bias.data_ptr<float>() : nullptr;
  float* out_data = out.data_ptr<float>() + first_channel * plane;
  // What every task shares; each fills in its block, rows and image.
  RowTask shared{};
  shared.in_h = in_h;
  shared.in_w = in_w;
  shared.in_channels = g.in_channels;
  shared.kernel_h = g.kernel_h;
  shared.kernel_w = g.kernel_w;
  shared.stride_h = stride[0];
  shared.stride_w = stride[1];
  shared.out_w = g.out_w;
  shared.relu = relu;
  shared.plane = plane;
  const RowsFunction rows_of_task = rows_kernel();
  at::parallel_for(0, tasks, std::max<int64_t>(1, kMinChunkMacs / task_macs),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t task = begin; task < end; ++task) {
                       const int64_t first_row = (task % row_groups) * task_rows;
                       const int64_t block = (task / row_groups) % blocks;
                       const int64_t image = task / (row_groups * blocks);
                       const int64_t first = block * kDirectConvBlock;
                       RowTask t = shared;
                       t.input = input_data + image * g.in_channels * in_h * in_w;
                       t.weight = weight_data + block * block_weights;
                       t.bias = has_bias ? bias_data + first : nullptr;
                       t.first_row = first_row;
                       t.rows = std::min(task_rows, g.out_h - first_row);
                       t.lanes = std::min(kDirectConvBlock, g.out_channels - first);
                       t.out = out_data + image * out_image + first * plane + first_row * g.out_w;
                       rows_of_task(t);
                     }
                   });
}

at::Tensor direct_conv_cpu(const at::Tensor& x, const at::Tensor& packed_w,
                           const std::optional<at::Tensor>& b, int64_t out_channels,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, bool relu) {
  const DirectConvGeometry g =
      check_direct_conv_args(x, packed_w, b, out_channels, stride, padding);
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  direct_conv_into(x, packed_w, b, g, stride, padding, relu, out, 0);
  return out;
}

at::Tensor direct_conv_cat_cpu(at::TensorList xs, at::TensorList packed_ws,
                               const c10::List<std::optional<at::Tensor>>& bs,
                               c10::IntArrayRef out_channels, c10::IntArrayRef strides,
                               c10::IntArrayRef paddings, bool relu) {
  const std::vector<DirectConvGeometry> branches =
      check_direct_conv_cat_args(xs, packed_ws, bs, out_channels, strides, paddings);
  int64_t channels = 0;
  for (const DirectConvGeometry& g : branches) channels += g.out_channels;
  const DirectConvGeometry& first = branches.front();
  at::Tensor out = at::empty({first.batch, channels, first.out_h, first.out_w}, xs[0].options());
  int64_t offset = 0;
  for (size_t i = 0; i < branches.size(); ++i) {
    direct_conv_into(xs[i], packed_ws[i], bs.get(i), branches[i], strides.slice(2 * i, 2),
                     paddings.slice(2 * i, 2), relu, out, offset);
    offset += branches[i].out_channels;
  }
  return out;
}

}  // namespace

std::string direct_conv_isa() { return cpu_isa_name(cpu_isa()); }

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) {
  m.impl("direct_conv", &direct_conv_cpu);
  m.impl("direct_conv_cat", &direct_conv_cat_cpu);
}

}  // namespace deeprebirth::ops
