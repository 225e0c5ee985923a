// deeprebirth::linear: torch.nn.functional.linear with the output features split across the
// intra-op threads.
//
// ATen's linear for a few rows (a classifier at batch 1 to 32) runs its matrix product on one
// thread here: the product reads the whole weight once, which then streams through one core
// (a 1024 -> 1000 classifier at batch 1: 193 us with its weight from memory, 52 us from cache, on
// 2 threads as on 1). Split by output features, each thread multiplies its own rows of the weight:
// 107 and 40 us (docs/kernels.md, "Linear layers across threads").
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace deeprebirth::ops {

// Whether the split applies: CPU, float32 or float64, x (..., K) with at least one element and
// w (N, K) with N >= 1, b undefined or (N,), all of x's dtype. Any other call is ATen's.
bool linear_fast_path(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// x @ w.T + b, the values of torch.nn.functional.linear (within the rounding of a matrix product
// blocked another way), shape (..., N), contiguous. A call that needs a gradient is ATen's linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

}  // namespace deeprebirth::ops
