// deeprebirth::winograd_pack / winograd_conv2d: schemas, argument checks and the dispatcher
// entry points (see winograd_conv.h).
#include "ops/winograd_conv/winograd_conv.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"

namespace deeprebirth::ops {

std::pair<int64_t, int64_t> check_winograd_conv2d_args(const at::Tensor& x,
                                                       const at::Tensor& packed_w,
                                                       const std::optional<at::Tensor>& b,
                                                       int64_t out_channels,
                                                       c10::IntArrayRef padding) {
  constexpr const char* op = "winograd_conv2d";
  check_int_list(padding, 2, true, op, "padding");
  TORCH_CHECK(x.dim() == 4, op, ": expected x of shape (N, C_in, H, W), but got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && packed_w.device().is_cpu() &&
                  packed_w.scalar_type() == at::kFloat,
              op, ": expected float32 CPU tensors, but got x ", x.dtype(), " on ", x.device(),
              " and packed_w ", packed_w.dtype(), " on ", packed_w.device());
  TORCH_CHECK(out_channels > 0, op, ": expected out_channels > 0, but got ", out_channels);
  const int64_t blocks = (out_channels + 15) / 16;
  TORCH_CHECK(packed_w.dim() == 4 && (packed_w.size(0) == 16 || packed_w.size(0) == 36) &&
                  packed_w.size(1) == blocks && packed_w.size(2) == x.size(1) &&
                  packed_w.size(3) == 16 && packed_w.is_contiguous(),
              op, ": expected packed_w = winograd_pack(w) of a (", out_channels, ", ", x.size(1),
              ", 3, 3) weight, i.e. contiguous of shape (16 or 36, ", blocks, ", ", x.size(1),
              ", 16), but got ", packed_w.sizes());
  if (b.has_value() && b->defined()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == out_channels && b->scalar_type() == at::kFloat &&
                    b->device().is_cpu(),
                op, ": expected b of shape (", out_channels, ") (float32, CPU), but got ",
                b->sizes(), " ", b->dtype());
  }
  const int64_t out_h = x.size(2) + 2 * padding[0] - 2, out_w = x.size(3) + 2 * padding[1] - 2;
  TORCH_CHECK(out_h > 0 && out_w > 0, op, ": the input (", x.size(2), "x", x.size(3),
              ") padded by ", padding, " is smaller than the 3x3 kernel");
  return {out_h, out_w};
}

at::Tensor winograd_pack(const at::Tensor& w, int64_t tile) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::winograd_pack", "")
                       .typed<decltype(winograd_pack)>();
  return op.call(w, tile);
}

at::Tensor winograd_conv2d(const at::Tensor& x, const at::Tensor& packed_w,
                           const std::optional<at::Tensor>& b, int64_t out_channels,
                           c10::IntArrayRef padding, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::winograd_conv2d", "")
                       .typed<decltype(winograd_conv2d)>();
  return op.call(x, packed_w, b, out_channels, padding, relu);
}

at::Tensor& winograd_conv2d_out(const at::Tensor& x, const at::Tensor& packed_w,
                                const std::optional<at::Tensor>& b, int64_t out_channels,
                                c10::IntArrayRef padding, bool relu, at::Tensor& out) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::winograd_conv2d", "out")
                       .typed<decltype(winograd_conv2d_out)>();
  return op.call(x, packed_w, b, out_channels, padding, relu, out);
}

void check_winograd_out(const at::Tensor& out, const at::Tensor& x, int64_t out_channels,
                        std::pair<int64_t, int64_t> size) {
  constexpr const char* op = "winograd_conv2d.out";
  TORCH_CHECK(out.dim() == 4 && out.size(0) == x.size(0) && out.size(1) == out_channels &&
                  out.size(2) == size.first && out.size(3) == size.second,
              op, ": expected out of shape (", x.size(0), ", ", out_channels, ", ", size.first,
              ", ", size.second, "), but got ", out.sizes());
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat, op,
              ": expected a float32 CPU out, but got ", out.dtype(), " on ", out.device());
  // channels innermost, pixels and rows evenly apart: channels_last or its channel slice
  TORCH_CHECK(out.stride(1) == 1 && out.stride(3) >= out_channels &&
                  out.stride(2) == out.size(3) * out.stride(3) &&
                  out.stride(0) >= out.size(2) * out.stride(2),
              op,
              ": expected out in channels_last layout (or a channel slice of a channels_last "
              "tensor), but got strides ",
              out.strides());
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def("winograd_pack(Tensor w, int tile=2) -> Tensor");
  m.def(
      "winograd_conv2d(Tensor x, Tensor packed_w, Tensor? b, int out_channels, int[2] padding, "
      "bool relu) -> Tensor");
  m.def(
      "winograd_conv2d.out(Tensor x, Tensor packed_w, Tensor? b, int out_channels, "
      "int[2] padding, bool relu, *, Tensor(a!) out) -> Tensor(a!)");
}

}  // namespace deeprebirth::ops
