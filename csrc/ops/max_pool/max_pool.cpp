// deeprebirth::max_pool2d: schema, the fast path's conditions and the dispatcher entry point
// (see max_pool.h).
#include "ops/max_pool/max_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/common/arg_checks.h"

namespace deeprebirth::ops {

bool max_pool2d_fast_path(const at::Tensor& x, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode) {
  if (x.dim() != 4 || x.size(0) == 0 || x.size(1) == 0 || !x.device().is_cpu() ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast) || x.is_contiguous() ||
      kernel_size.size() != 2 || stride.size() != 2 || padding.size() != 2) {
    return false;
  }
  for (int d = 0; d < 2; ++d) {
    if (kernel_size[d] < 1 || stride[d] < 1 || padding[d] < 0 || 2 * padding[d] > kernel_size[d] ||
        pool_output_size(x.size(2 + d), kernel_size[d], stride[d], padding[d], ceil_mode) < 1) {
      return false;
    }
  }
  return true;
}

at::Tensor max_pool2d(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                      c10::IntArrayRef padding, bool ceil_mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::max_pool2d", "")
                       .typed<decltype(max_pool2d)>();
  return op.call(x, kernel_size, stride, padding, ceil_mode);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def(
      "max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) "
      "-> Tensor");
}

}  // namespace deeprebirth::ops
