// Schema, argument checks and dispatcher entry of deeprebirth::conv_pool.
#include "ops/conv_pool/conv_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"

namespace deeprebirth::ops {

namespace {
constexpr const char* kOp = "conv_pool";
}  // namespace

PoolKind parse_pool_kind(c10::string_view pool) {
  if (pool == "max") return PoolKind::Max;
  if (pool == "avg") return PoolKind::Avg;
  TORCH_CHECK(false, kOp, ": expected pool to be \"max\" or \"avg\", but got \"", std::string(pool),
              "\"");
}

ConvPoolArgs make_conv_pool_args(c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t groups, c10::string_view pool,
                                 c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride,
                                 c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
  return ConvPoolArgs{stride,      padding,     dilation,     groups,    parse_pool_kind(pool),
                      pool_kernel, pool_stride, pool_padding, ceil_mode, relu};
}

ConvPoolGeometry check_conv_pool_args(const at::Tensor& x, const at::Tensor& w,
                                      const std::optional<at::Tensor>& b,
                                      const ConvPoolArgs& args) {
  check_4d_float(x, kOp, "x");
  check_4d_float(w, kOp, "w");
  check_same_dtype_and_device(w, "w", x, "x", kOp);
  check_int_list(args.stride, 2, false, kOp, "stride");
  check_int_list(args.padding, 2, true, kOp, "padding");
  check_int_list(args.dilation, 2, false, kOp, "dilation");
  TORCH_CHECK(args.groups > 0, kOp, ": expected groups > 0, but got ", args.groups);
  TORCH_CHECK(x.size(1) == w.size(1) * args.groups, kOp,
              ": expected x to have w.size(1) * groups = ", w.size(1), " * ", args.groups, " = ",
              w.size(1) * args.groups, " channels, but got x of shape ", shape_string(x.sizes()));
  TORCH_CHECK(w.size(1) > 0, kOp,
              ": expected x and w to have at least one input channel, but "
              "got x of shape ",
              shape_string(x.sizes()), " and w of shape ", shape_string(w.sizes()));
  TORCH_CHECK(w.size(2) > 0 && w.size(3) > 0, kOp,
              ": expected the kernel size of w (kh, kw) to be greater than zero, but got w of "
              "shape ",
              shape_string(w.sizes()));
  TORCH_CHECK(w.size(0) > 0 && w.size(0) % args.groups == 0, kOp,
              ": expected w.size(0) (output channels) to be a positive multiple of groups = ",
              args.groups, ", but got w of shape ", shape_string(w.sizes()));
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), kOp,
                ": expected b to be a 1-D tensor of w.size(0) = ", w.size(0),
                " values, but got shape ", shape_string(b->sizes()));
    check_same_dtype_and_device(*b, "b", x, "x", kOp);
  }
  check_int_list(args.pool_kernel, 2, false, kOp, "pool_kernel");
  check_int_list(args.pool_stride, 2, false, kOp, "pool_stride");
  check_int_list(args.pool_padding, 2, true, kOp, "pool_padding");

  ConvPoolGeometry g{};
  int64_t* conv_size[2] = {&g.conv_h, &g.conv_w};
  int64_t* out_size[2] = {&g.out_h, &g.out_w};
  for (int d = 0; d < 2; ++d) {
    const int64_t in = x.size(2 + d);
    const int64_t k = w.size(2 + d);
    *conv_size[d] = conv_output_size(in, k, args.stride[d], args.padding[d], args.dilation[d]);
    TORCH_CHECK(*conv_size[d] > 0, kOp, ": the dilated kernel (size ", k, ", dilation ",
                args.dilation[d], ") of w is larger than the padded input (size ", in,
                " + 2 * padding ", args.padding[d], ") along dimension ", 2 + d,
                " of x; x has shape ", shape_string(x.sizes()));
    TORCH_CHECK(args.pool_padding[d] * 2 <= args.pool_kernel[d], kOp,
                ": expected pool_padding to be at most half of pool_kernel, but got pool_padding ",
                args.pool_padding, " and pool_kernel ", args.pool_kernel);
    *out_size[d] = pool_output_size(*conv_size[d], args.pool_kernel[d], args.pool_stride[d],
                                    args.pool_padding[d], args.ceil_mode);
    TORCH_CHECK(*out_size[d] > 0, kOp, ": the pooled output size is ", *out_size[d],
                " along dimension ", 2 + d, " (convolution output ", g.conv_h, "x", g.conv_w,
                ", pool_kernel ", args.pool_kernel, ", pool_stride ", args.pool_stride,
                ", pool_padding ", args.pool_padding, "); expected a positive size");
  }
  return g;
}

at::Tensor conv_pool(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                     int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
                     c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode,
                     bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::conv_pool", "")
                       .typed<decltype(conv_pool)>();
  return op.call(x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                 pool_padding, ceil_mode, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::conv_pool_backward", "")
                       .typed<decltype(conv_pool_backward)>();
  return op.call(grad, x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                 pool_padding, ceil_mode, relu);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def(
      "conv_pool(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, str pool, int[2] pool_kernel, int[2] pool_stride, int[2] pool_padding, "
      "bool ceil_mode, bool relu) -> Tensor");
  m.def(
      "conv_pool_backward(Tensor grad, Tensor x, Tensor w, Tensor? b, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, str pool, int[2] pool_kernel, "
      "int[2] pool_stride, int[2] pool_padding, bool ceil_mode, bool relu) "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace deeprebirth::ops
