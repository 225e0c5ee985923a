// deeprebirth::linear: schema, the split's conditions and the dispatcher entry point (see
// linear.h).
#include "ops/linear/linear.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace deeprebirth::ops {

bool linear_fast_path(const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& b) {
  const auto fits = [&](const at::Tensor& t) {
    return t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == x.scalar_type();
  };
  if (x.dim() < 1 || x.numel() == 0 || w.dim() != 2 || w.size(0) < 1 || x.size(-1) != w.size(1) ||
      !fits(x) || !fits(w) || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble)) {
    return false;
  }
  return !b.has_value() || !b->defined() || (fits(*b) && b->dim() == 1 && b->size(0) == w.size(0));
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::linear", "")
                       .typed<decltype(linear)>();
  return op.call(x, w, b);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) { m.def("linear(Tensor x, Tensor w, Tensor? b) -> Tensor"); }

}  // namespace deeprebirth::ops
