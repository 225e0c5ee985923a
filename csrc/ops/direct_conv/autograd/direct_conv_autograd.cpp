// Autograd entry of deeprebirth::direct_conv: an inference kernel, so a call that would need a
// gradient raises (naming what to use instead) rather than returning a result that silently has
// none; every other call goes on to the backend kernel.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"
#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {
namespace {

bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

at::Tensor direct_conv_autograd(const at::Tensor& x, const at::Tensor& packed_w,
                                const std::optional<at::Tensor>& b, int64_t out_channels,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, bool relu) {
  TORCH_CHECK(!conv_needs_grad(x, packed_w, b),
              "direct_conv: is an inference kernel and has no gradient, but x, packed_w or b "
              "requires grad; run it under torch.no_grad() or use torch.nn.functional.conv2d");
  at::AutoDispatchBelowADInplaceOrView guard;
  return direct_conv(x, packed_w, b, out_channels, stride, padding, relu);
}

at::Tensor direct_conv_cat_autograd(at::TensorList xs, at::TensorList packed_ws,
                                    const c10::List<std::optional<at::Tensor>>& bs,
                                    c10::IntArrayRef out_channels, c10::IntArrayRef strides,
                                    c10::IntArrayRef paddings, bool relu) {
  bool any = false;
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::optional<at::Tensor> b = i < bs.size() ? bs.get(i) : std::nullopt;
    any = any || needs_grad(xs[i]) || (i < packed_ws.size() && needs_grad(packed_ws[i])) ||
          (b.has_value() && needs_grad(*b));
  }
  TORCH_CHECK(!(at::GradMode::is_enabled() && any),
              "direct_conv_cat: is an inference kernel and has no gradient, but an input "
              "requires grad; run it under torch.no_grad() or use deeprebirth::small_conv2d_cat");
  at::AutoDispatchBelowADInplaceOrView guard;
  return direct_conv_cat(xs, packed_ws, bs, out_channels, strides, paddings, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) {
  m.impl("direct_conv", &direct_conv_autograd);
  m.impl("direct_conv_cat", &direct_conv_cat_autograd);
}

}  // namespace deeprebirth::ops
