#include "ops/common/arg_checks.h"

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace deeprebirth::ops {

std::string shape_string(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

bool conv_needs_grad(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  return at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() ||
                                        (b.has_value() && b->defined() && b->requires_grad()));
}

void check_4d_float(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, but got an undefined tensor");
  TORCH_CHECK(t.dim() == 4, op, ": expected ", name, " to be a 4-D tensor, but got a ", t.dim(),
              "-D tensor of shape ", shape_string(t.sizes()));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
              " to have a floating-point dtype, but got ", t.scalar_type());
}

void check_same_dtype_and_device(const at::Tensor& t, const std::string& name,
                                 const at::Tensor& ref, const char* ref_name, const char* op) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have dtype ",
              ref.scalar_type(), " (the dtype of ", ref_name, "), but got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " to be on device ",
              ref.device(), " (the device of ", ref_name, "), but got ", t.device());
}

void check_int_list(c10::IntArrayRef values, int64_t expected_len, bool allow_zero, const char* op,
                    const char* name) {
  TORCH_CHECK(static_cast<int64_t>(values.size()) == expected_len, op, ": expected ", name,
              " to have ", expected_len, " values, but got ", values.size(), " (", values, ")");
  for (const int64_t v : values) {
    if (allow_zero) {
      TORCH_CHECK(v >= 0, op, ": expected every value of ", name, " to be >= 0, but got ", values);
    } else {
      TORCH_CHECK(v > 0, op, ": expected every value of ", name, " to be > 0, but got ", values);
    }
  }
}

}  // namespace deeprebirth::ops
