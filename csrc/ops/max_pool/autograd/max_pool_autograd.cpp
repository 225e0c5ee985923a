// deeprebirth::max_pool2d under autograd: a call that needs a gradient is ATen's max_pool2d (whose
// backward reads the indices this operator does not keep), with the same values; any other call
// runs the kernel below autograd.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include "ops/max_pool/max_pool.h"

namespace deeprebirth::ops {
namespace {

at::Tensor max_pool2d_autograd(const at::Tensor& x, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode) {
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return at::max_pool2d(x, kernel_size, stride, padding, {1, 1}, ceil_mode);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return max_pool2d(x, kernel_size, stride, padding, ceil_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) { m.impl("max_pool2d", &max_pool2d_autograd); }

}  // namespace deeprebirth::ops
