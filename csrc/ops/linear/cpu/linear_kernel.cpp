// deeprebirth::linear's CPU kernel: each intra-op thread computes one contiguous block of output
// features, x @ w[block].T (+ b[block]) into its columns of the output, with ATen's matrix
// product on its thread; any other call is ATen's linear.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "ops/linear/linear.h"

namespace deeprebirth::ops {
namespace {

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& b) {
  if (!linear_fast_path(x, w, b)) return at::linear(x, w, b);
  const int64_t features = w.size(0);
  at::Tensor rows = x.reshape({-1, x.size(-1)});
  // The matrix product rounds differently on inputs aligned differently: from an aligned copy the
  // result depends on the shapes and thread count only (an eager forward and its recorded plan,
  // whose buffers differ, agree bitwise).
  if (!rows.is_contiguous() || reinterpret_cast<uintptr_t>(rows.data_ptr()) % 64 != 0) {
    rows = rows.clone(at::MemoryFormat::Contiguous);
  }
  at::Tensor out = at::empty({rows.size(0), features}, x.options());
  const bool bias = b.has_value() && b->defined();
  // One block per thread: fewer, larger products (each reads its rows of w once).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = (features + threads - 1) / threads;
  at::parallel_for(0, features, block, [&](int64_t begin, int64_t end) {
    // below autograd on every thread (a worker does not inherit the caller's dispatch guard)
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor part = out.narrow(1, begin, end - begin);
    const at::Tensor rows_of_w = w.narrow(0, begin, end - begin).t();
    if (bias) {
      at::addmm_out(part, b->narrow(0, begin, end - begin), rows, rows_of_w);
    } else {
      at::mm_out(part, rows, rows_of_w);
    }
  });
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = features;
  return out.view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("linear", &linear_cpu); }

}  // namespace deeprebirth::ops
