// deeprebirth::linear under autograd: a call that needs a gradient is ATen's linear, with the
// same values; any other call runs the kernel below autograd.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include "ops/linear/linear.h"

namespace deeprebirth::ops {
namespace {

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& w,
                           const std::optional<at::Tensor>& b) {
  const bool bias_grad = b.has_value() && b->defined() && b->requires_grad();
  if (at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || bias_grad)) {
    return at::linear(x, w, b);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return ops::linear(x, w, b);  // qualified: at::linear is found by argument lookup too
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) { m.impl("linear", &linear_autograd); }

}  // namespace deeprebirth::ops
