// Schema, weight packing, argument checks and dispatcher entry of deeprebirth::direct_conv.
#include "ops/direct_conv/direct_conv.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"
#include "ops/direct_conv/cpu/onednn_packed_conv.h"

namespace deeprebirth::ops {

namespace {
constexpr const char* kOp = "direct_conv";
}  // namespace

at::Tensor direct_conv_pack(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 4, "direct_conv_pack: expected w to be a 4-D tensor (C_out, C_in, kh, kw)",
              ", but got a ", w.dim(), "-D tensor of shape ", shape_string(w.sizes()));
  TORCH_CHECK(w.size(0) > 0,
              "direct_conv_pack: expected w to have at least one output channel, "
              "but got shape ",
              shape_string(w.sizes()));
  const int64_t blocks = (w.size(0) + kDirectConvBlock - 1) / kDirectConvBlock;
  const at::Tensor padded =
      at::constant_pad_nd(w, {0, 0, 0, 0, 0, 0, 0, blocks * kDirectConvBlock - w.size(0)});
  return padded.reshape({blocks, kDirectConvBlock, w.size(1), w.size(2), w.size(3)})
      .permute({0, 2, 3, 4, 1})
      .contiguous();
}

DirectConvGeometry check_direct_conv_args(const at::Tensor& x, const at::Tensor& packed_w,
                                          const std::optional<at::Tensor>& b, int64_t out_channels,
                                          c10::IntArrayRef stride, c10::IntArrayRef padding) {
  check_4d_float(x, kOp, "x");
  check_same_dtype_and_device(packed_w, "packed_w", x, "x", kOp);
  TORCH_CHECK(packed_w.dim() == 5 && packed_w.size(4) == kDirectConvBlock, kOp,
              ": expected packed_w to be direct_conv_pack's 5-D layout (ceil(C_out / 16), C_in, kh,"
              " kw, 16), but got shape ",
              shape_string(packed_w.sizes()));
  TORCH_CHECK(packed_w.size(1) == x.size(1), kOp,
              ": expected x to have packed_w.size(1) = ", packed_w.size(1),
              " channels, but got x of shape ", shape_string(x.sizes()));
  TORCH_CHECK(out_channels > 0 &&
                  (out_channels + kDirectConvBlock - 1) / kDirectConvBlock == packed_w.size(0),
              kOp, ": expected out_channels in (", (packed_w.size(0) - 1) * kDirectConvBlock, ", ",
              packed_w.size(0) * kDirectConvBlock, "] for packed_w of shape ",
              shape_string(packed_w.sizes()), ", but got ", out_channels);
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == out_channels, kOp,
                ": expected b to be a 1-D tensor of out_channels = ", out_channels,
                " values, but got shape ", shape_string(b->sizes()));
    check_same_dtype_and_device(*b, "b", x, "x", kOp);
  }
  check_int_list(stride, 2, false, kOp, "stride");
  check_int_list(padding, 2, true, kOp, "padding");
  // The kernel's work per task is C_in * kh * kw multiply-accumulates: it must not be empty.
  TORCH_CHECK(x.size(1) > 0, kOp, ": expected x to have at least one channel, but got x of shape ",
              shape_string(x.sizes()));
  TORCH_CHECK(packed_w.size(2) > 0 && packed_w.size(3) > 0, kOp,
              ": expected the kernel of packed_w (kh, kw) to be greater than zero, but got "
              "packed_w of shape ",
              shape_string(packed_w.sizes()));
  DirectConvGeometry g{x.size(0),        x.size(1),        x.size(2), x.size(3), out_channels,
                       packed_w.size(2), packed_w.size(3), 0,         0};
  g.out_h = conv_output_size(g.in_h, g.kernel_h, stride[0], padding[0], 1);
  g.out_w = conv_output_size(g.in_w, g.kernel_w, stride[1], padding[1], 1);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, kOp, ": the kernel of packed_w (", g.kernel_h, "x",
              g.kernel_w, ") is larger than the padded input (x of shape ", shape_string(x.sizes()),
              ", padding ", padding, ")");
  return g;
}

at::Tensor direct_conv(const at::Tensor& x, const at::Tensor& packed_w,
                       const std::optional<at::Tensor>& b, int64_t out_channels,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::direct_conv", "")
                       .typed<decltype(direct_conv)>();
  return op.call(x, packed_w, b, out_channels, stride, padding, relu);
}

bool direct_conv_pays(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                      c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                      int64_t max_macs, int64_t max_1x1_pixels) {
  if (x.dim() != 4 || w.dim() != 4 || !x.device().is_cpu() || !w.device().is_cpu() ||
      x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || groups != 1 ||
      stride.size() != 2 || padding.size() != 2 || dilation.size() != 2 || dilation[0] != 1 ||
      dilation[1] != 1 || x.size(1) != w.size(1)) {
    return false;
  }
  // Arguments conv2d rejects (or an empty sum) are conv2d's to report, before any division.
  if (stride[0] <= 0 || stride[1] <= 0 || padding[0] < 0 || padding[1] < 0 || w.size(0) == 0 ||
      w.size(1) == 0 || w.size(2) == 0 || w.size(3) == 0) {
    return false;
  }
  const int64_t out_h = conv_output_size(x.size(2), w.size(2), stride[0], padding[0], 1);
  const int64_t out_w = conv_output_size(x.size(3), w.size(3), stride[1], padding[1], 1);
  if (out_h <= 0 || out_w <= 0) return false;
  if (w.size(2) * w.size(3) == 1 && out_h * out_w > max_1x1_pixels) return false;
  return x.size(0) * w.size(0) * out_h * out_w * w.size(1) * w.size(2) * w.size(3) < max_macs;
}

namespace {

// `y` (direct_conv's NCHW output) in the memory format conv2d would give for `x`: a
// channels_last input keeps a channels_last output. Without it one small layer turned the rest
// of a channels_last network to NCHW (docs/kernels.md, small_conv2d's layout).
at::Tensor in_layout_of(const at::Tensor& x, const at::Tensor& y) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? y.contiguous(at::MemoryFormat::ChannelsLast)
             : y;
}

}  // namespace

namespace {

void check_small_conv2d_args(const char* op, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, int64_t groups) {
  check_int_list(stride, 2, false, op, "stride");
  check_int_list(padding, 2, true, op, "padding");
  check_int_list(dilation, 2, false, op, "dilation");
  TORCH_CHECK(groups > 0, op, ": expected groups > 0, but got ", groups);
}

enum class SmallConvKernel { kDirect, kOneDnnPacked, kConv2d };

// The kernel small_conv2d runs a call on: on frozen weights (TorchScript's constants, eager's
// snapshots) the packed path, which times oneDNN against Winograd and the direct kernel where they
// apply; else the direct kernel where it pays; else conv2d. Only conv2d records a gradient.
SmallConvKernel small_conv2d_kernel(const at::Tensor& x, const at::Tensor& w,
                                    const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                    c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                    int64_t groups, bool needs_grad, int64_t max_macs,
                                    int64_t max_1x1_pixels) {
  if (needs_grad) return SmallConvKernel::kConv2d;
  if (onednn_packed_conv_applies(x, w, b, stride, padding, dilation, groups)) {
    return SmallConvKernel::kOneDnnPacked;
  }
  if (direct_conv_pays(x, w, stride, padding, dilation, groups, max_macs, max_1x1_pixels)) {
    return SmallConvKernel::kDirect;
  }
  return SmallConvKernel::kConv2d;
}

// packed_w where the packed path may time the direct kernel (it pays for the call), else an
// undefined tensor.
at::Tensor direct_candidate(const at::Tensor& x, const at::Tensor& w, const at::Tensor& packed_w,
                            c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups, int64_t max_macs,
                            int64_t max_1x1_pixels) {
  return direct_conv_pays(x, w, stride, padding, dilation, groups, max_macs, max_1x1_pixels)
             ? packed_w
             : at::Tensor();
}

}  // namespace

at::Tensor small_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& packed_w,
                        const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                        bool relu, int64_t max_macs, int64_t max_1x1_pixels) {
  check_small_conv2d_args("small_conv2d", stride, padding, dilation, groups);
  const bool needs_grad = conv_needs_grad(x, w, b);
  switch (small_conv2d_kernel(x, w, b, stride, padding, dilation, groups, needs_grad, max_macs,
                              max_1x1_pixels)) {
    case SmallConvKernel::kDirect:
      return in_layout_of(x, direct_conv(x, packed_w, b, w.size(0), stride, padding, relu));
    case SmallConvKernel::kOneDnnPacked:
      return onednn_packed_conv2d(x, w, b, stride, padding, dilation, groups, relu,
                                  direct_candidate(x, w, packed_w, stride, padding, dilation,
                                                   groups, max_macs, max_1x1_pixels));
    case SmallConvKernel::kConv2d:
      break;
  }
  at::Tensor y = at::conv2d(x, w, b, stride, padding, dilation, groups);
  if (!relu) return y;
  return needs_grad ? at::relu(y) : y.relu_();  // y is this call's own tensor
}

namespace {

// A float32 CPU residual shaped like conv2d(x, w)'s output: what oneDNN's in-place sum takes.
// Any other is add_'s to report or broadcast.
bool residual_fits(const at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                   c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  if (residual.scalar_type() != at::kFloat || !residual.device().is_cpu() ||
      residual.layout() != at::kStrided || residual.dim() != 4 || x.dim() != 4 || w.dim() != 4) {
    return false;
  }
  bool fits = residual.size(0) == x.size(0) && residual.size(1) == w.size(0);
  for (int64_t i = 0; i < 2; ++i) {
    fits = fits && residual.size(2 + i) == conv_output_size(x.size(2 + i), w.size(2 + i), stride[i],
                                                            padding[i], dilation[i]);
  }
  return fits;
}

}  // namespace

at::Tensor& small_conv2d_add_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                              const at::Tensor& packed_w, const std::optional<at::Tensor>& b,
                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, int64_t groups, bool relu,
                              int64_t max_macs, int64_t max_1x1_pixels) {
  check_small_conv2d_args("small_conv2d_add_", stride, padding, dilation, groups);
  const bool needs_grad =
      conv_needs_grad(x, w, b) || (at::GradMode::is_enabled() && residual.requires_grad());
  // oneDNN accumulates into the residual as it writes: no second output, no separate add pass.
  // Only where small_conv2d would run oneDNN too.
  if (small_conv2d_kernel(x, w, b, stride, padding, dilation, groups, needs_grad, max_macs,
                          max_1x1_pixels) == SmallConvKernel::kOneDnnPacked &&
      residual_fits(residual, x, w, stride, padding, dilation)) {
    return onednn_packed_conv2d_add_(residual, x, w, b, stride, padding, dilation, groups, relu);
  }
  residual.add_(small_conv2d(x, w, packed_w, b, stride, padding, dilation, groups, false, max_macs,
                             max_1x1_pixels));
  return relu ? residual.relu_() : residual;
}

std::vector<DirectConvGeometry> check_direct_conv_cat_args(
    at::TensorList xs, at::TensorList packed_ws, const c10::List<std::optional<at::Tensor>>& bs,
    c10::IntArrayRef out_channels, c10::IntArrayRef strides, c10::IntArrayRef paddings) {
  const size_t n = xs.size();
  TORCH_CHECK(n > 0, "direct_conv_cat: expected at least one branch, but got none");
  TORCH_CHECK(packed_ws.size() == n && bs.size() == n && out_channels.size() == n &&
                  strides.size() == 2 * n && paddings.size() == 2 * n,
              "direct_conv_cat: expected one packed weight, bias and out_channels and one "
              "(h, w) pair of strides and of paddings per branch for ",
              n, " branches, but got ", packed_ws.size(), " packed weights, ", bs.size(),
              " biases, ", out_channels.size(), " out_channels, ", strides.size(), " strides and ",
              paddings.size(), " paddings");
  std::vector<DirectConvGeometry> geometry;
  for (size_t i = 0; i < n; ++i) {
    try {
      geometry.push_back(check_direct_conv_args(xs[i], packed_ws[i], bs.get(i), out_channels[i],
                                                strides.slice(2 * i, 2), paddings.slice(2 * i, 2)));
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "direct_conv_cat: branch ", i, ": ", error.what_without_backtrace());
    }
    const DirectConvGeometry& g = geometry.back();
    const DirectConvGeometry& first = geometry.front();
    TORCH_CHECK(g.batch == first.batch && g.out_h == first.out_h && g.out_w == first.out_w,
                "direct_conv_cat: expected every branch's output to have branch 0's batch and "
                "spatial size (",
                first.batch, ", ", first.out_h, "x", first.out_w, "), but branch ", i, " gives (",
                g.batch, ", ", g.out_h, "x", g.out_w, ")");
    check_same_dtype_and_device(xs[i], "xs[i]", xs[0], "xs[0]", "direct_conv_cat");
  }
  return geometry;
}

namespace {

// The channels_last output of small_conv2d_cat's branches, for its branches to write into their
// channels (Winograd directly: no torch.cat copy), when every branch has a channels_last float32
// CPU input, wants no gradient, and gives an output of branch 0's batch and size (what cat
// would give); undefined otherwise (cat then joins the outputs, and reports any mismatch).
at::Tensor channels_last_cat_output(at::TensorList xs, at::TensorList ws,
                                    const c10::List<std::optional<at::Tensor>>& bs,
                                    c10::IntArrayRef strides, c10::IntArrayRef paddings) {
  int64_t channels = 0, out_h = -1, out_w = -1;
  for (size_t i = 0; i < xs.size(); ++i) {
    const at::Tensor& x = xs[i];
    const at::Tensor& w = ws[i];
    if (x.dim() != 4 || w.dim() != 4 || !x.device().is_cpu() || x.scalar_type() != at::kFloat ||
        x.suggest_memory_format() != at::MemoryFormat::ChannelsLast || x.size(0) != xs[0].size(0) ||
        conv_needs_grad(x, w, bs.get(i)) || w.scalar_type() != at::kFloat || !w.device().is_cpu()) {
      return at::Tensor();
    }
    const int64_t h = conv_output_size(x.size(2), w.size(2), strides[2 * i], paddings[2 * i], 1);
    const int64_t wd =
        conv_output_size(x.size(3), w.size(3), strides[2 * i + 1], paddings[2 * i + 1], 1);
    if (h <= 0 || wd <= 0 || (i > 0 && (h != out_h || wd != out_w))) return at::Tensor();
    out_h = h;
    out_w = wd;
    channels += w.size(0);
  }
  return at::empty({xs[0].size(0), channels, out_h, out_w},
                   xs[0].options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

at::Tensor small_conv2d_cat(at::TensorList xs, at::TensorList ws, at::TensorList packed_ws,
                            const c10::List<std::optional<at::Tensor>>& bs,
                            c10::IntArrayRef strides, c10::IntArrayRef paddings, bool relu,
                            int64_t max_macs, int64_t max_1x1_pixels) {
  const size_t n = xs.size();
  TORCH_CHECK(n > 0 && ws.size() == n && packed_ws.size() == n && bs.size() == n &&
                  strides.size() == 2 * n && paddings.size() == 2 * n,
              "small_conv2d_cat: expected one weight, packed weight and bias and one (h, w) pair "
              "of strides and of paddings per branch for ",
              n, " branches, but got ", ws.size(), " weights, ", packed_ws.size(),
              " packed weights, ", bs.size(), " biases, ", strides.size(), " strides and ",
              paddings.size(), " paddings");
  for (size_t i = 0; i < n; ++i) {
    try {
      check_int_list(strides.slice(2 * i, 2), 2, false, "small_conv2d_cat", "stride");
      check_int_list(paddings.slice(2 * i, 2), 2, true, "small_conv2d_cat", "padding");
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "small_conv2d_cat: branch ", i, ": ", error.what_without_backtrace());
    }
  }
  // One direct_conv_cat call where every branch takes the direct kernel; on frozen weights with a
  // channels_last output, each branch's timed choice instead (the direct kernel among them).
  bool direct = true, frozen = true;
  std::vector<int64_t> out_channels;
  std::vector<SmallConvKernel> kernels;
  std::vector<bool> pays;  // whether the direct kernel may run the branch
  for (size_t i = 0; i < n; ++i) {
    const auto stride = strides.slice(2 * i, 2), padding = paddings.slice(2 * i, 2);
    const bool needs_grad = conv_needs_grad(xs[i], ws[i], bs.get(i));
    pays.push_back(
        direct_conv_pays(xs[i], ws[i], stride, padding, {1, 1}, 1, max_macs, max_1x1_pixels));
    kernels.push_back(small_conv2d_kernel(xs[i], ws[i], bs.get(i), stride, padding, {1, 1}, 1,
                                          needs_grad, max_macs, max_1x1_pixels));
    direct = direct && !needs_grad && pays[i];
    frozen = frozen && kernels[i] == SmallConvKernel::kOneDnnPacked;
    out_channels.push_back(ws[i].size(0));
  }
  const at::Tensor out =
      direct && !frozen ? at::Tensor() : channels_last_cat_output(xs, ws, bs, strides, paddings);
  if (direct && !out.defined()) {
    return in_layout_of(xs[0],
                        direct_conv_cat(xs, packed_ws, bs, out_channels, strides, paddings, relu));
  }
  if (out.defined()) {
    int64_t c0 = 0;
    for (size_t i = 0; i < n; ++i) {
      at::Tensor part = out.narrow(1, c0, ws[i].size(0));
      c0 += ws[i].size(0);
      const auto stride = strides.slice(2 * i, 2), padding = paddings.slice(2 * i, 2);
      if (kernels[i] == SmallConvKernel::kOneDnnPacked) {  // out defined: no gradient wanted
        onednn_packed_conv2d_into(part, xs[i], ws[i], bs.get(i), stride, padding, {1, 1}, 1, relu,
                                  pays[i] ? packed_ws[i] : at::Tensor());
      } else {
        part.copy_(small_conv2d(xs[i], ws[i], packed_ws[i], bs.get(i), stride, padding, {1, 1}, 1,
                                relu, max_macs, max_1x1_pixels));
      }
    }
    return out;
  }
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < n; ++i) {
    outputs.push_back(small_conv2d(xs[i], ws[i], packed_ws[i], bs.get(i), strides.slice(2 * i, 2),
                                   paddings.slice(2 * i, 2), {1, 1}, 1, relu, max_macs,
                                   max_1x1_pixels));
  }
  return at::cat(outputs, 1);
}

at::Tensor direct_conv_cat(at::TensorList xs, at::TensorList packed_ws,
                           const c10::List<std::optional<at::Tensor>>& bs,
                           c10::IntArrayRef out_channels, c10::IntArrayRef strides,
                           c10::IntArrayRef paddings, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::direct_conv_cat", "")
                       .typed<decltype(direct_conv_cat)>();
  return op.call(xs, packed_ws, bs, out_channels, strides, paddings, relu);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def("direct_conv_pack(Tensor w) -> Tensor");
  m.def(
      "direct_conv(Tensor x, Tensor packed_w, Tensor? b, int out_channels, int[2] stride, "
      "int[2] padding, bool relu) -> Tensor");
  m.def(
      "small_conv2d(Tensor x, Tensor w, Tensor packed_w, Tensor? b, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool relu, int max_macs, "
      "int max_1x1_pixels) -> Tensor");
  m.def(
      "small_conv2d_add_(Tensor(a!) residual, Tensor x, Tensor w, Tensor packed_w, Tensor? b, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu, int max_macs, "
      "int max_1x1_pixels) -> Tensor(a!)");
  m.def(
      "direct_conv_cat(Tensor[] xs, Tensor[] packed_ws, Tensor?[] bs, int[] out_channels, "
      "int[] strides, int[] paddings, bool relu) -> Tensor");
  m.def(
      "small_conv2d_cat(Tensor[] xs, Tensor[] ws, Tensor[] packed_ws, Tensor?[] bs, "
      "int[] strides, int[] paddings, bool relu, int max_macs, int max_1x1_pixels) -> Tensor");
  m.def("direct_conv_isa() -> str", &direct_conv_isa);
}

TORCH_LIBRARY_IMPL(deeprebirth, CompositeImplicitAutograd, m) {
  m.impl("direct_conv_pack", &direct_conv_pack);
  m.impl("small_conv2d", &small_conv2d);
  m.impl("small_conv2d_add_", &small_conv2d_add_);
  m.impl("small_conv2d_cat", &small_conv2d_cat);
}

}  // namespace deeprebirth::ops
