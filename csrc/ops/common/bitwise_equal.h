// deeprebirth::bitwise_equal — whether two tensors hold the same bytes.
//
// Schema (registered in bitwise_equal.cpp):
//   bitwise_equal(Tensor a, Tensor b) -> bool
// The test a module's cache of a weight's packed copies runs on every call: a copy is used only
// while the weight is bitwise what it was packed from, which sees every write (through .data,
// fused optimizers, NumPy views), unlike the version counter. CPU only.
#pragma once

#include <ATen/core/Tensor.h>

namespace deeprebirth::ops {

// Whether a and b have one dtype and shape and the same bytes at every index (NaN equal to a NaN
// of the same bits, 0.0 not equal to -0.0). One memcmp when both are dense with the same strides
// (in parallel chunks for large tensors), a comparison of contiguous copies otherwise.
bool bitwise_equal(const at::Tensor& a, const at::Tensor& b);

}  // namespace deeprebirth::ops
