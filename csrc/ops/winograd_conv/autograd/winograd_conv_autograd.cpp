// Autograd entry of deeprebirth::winograd_conv2d: an inference kernel, so a call that would need a
// gradient raises (naming what to use instead) rather than returning a result that silently has
// none; every other call goes on to the backend kernel.
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"
#include "ops/winograd_conv/winograd_conv.h"

namespace deeprebirth::ops {
namespace {

at::Tensor winograd_conv2d_autograd(const at::Tensor& x, const at::Tensor& packed_w,
                                    const std::optional<at::Tensor>& b, int64_t out_channels,
                                    c10::IntArrayRef padding, bool relu) {
  TORCH_CHECK(!conv_needs_grad(x, packed_w, b),
              "winograd_conv2d: is an inference kernel and has no gradient, but x, packed_w or b "
              "requires grad; run it under torch.no_grad() or use torch.nn.functional.conv2d");
  at::AutoDispatchBelowADInplaceOrView guard;
  return winograd_conv2d(x, packed_w, b, out_channels, padding, relu);
}

at::Tensor& winograd_conv2d_out_autograd(const at::Tensor& x, const at::Tensor& packed_w,
                                         const std::optional<at::Tensor>& b, int64_t out_channels,
                                         c10::IntArrayRef padding, bool relu, at::Tensor& out) {
  TORCH_CHECK(
      !conv_needs_grad(x, packed_w, b) && !(at::GradMode::is_enabled() && out.requires_grad()),
      "winograd_conv2d.out: is an inference kernel and has no gradient, but an argument "
      "requires grad; run it under torch.no_grad() or use torch.nn.functional.conv2d");
  at::AutoDispatchBelowADInplaceOrView guard;
  return winograd_conv2d_out(x, packed_w, b, out_channels, padding, relu, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) {
  m.impl("winograd_conv2d", &winograd_conv2d_autograd);
  m.impl("winograd_conv2d.out", &winograd_conv2d_out_autograd);
}

}  // namespace deeprebirth::ops
