// deeprebirth::max_pool2d — max pooling without indices.
//
// Schema (registered in max_pool.cpp):
//   max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode)
//       -> Tensor
// Equal to torch.nn.functional.max_pool2d with dilation 1 (NaN propagated, padding never the
// maximum), in x's memory format. ATen's CPU max_pool2d computes and writes the int64 index of
// every maximum, which inference never reads: on channels_last float inputs the CPU kernel runs
// conv_pool's pooling epilogue instead (docs/kernels.md); any other input runs ATen's.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace deeprebirth::ops {

// Whether the CPU kernel's own path computes a call on x with these arguments (float32/float64
// channels_last 4-D tensor, arguments max_pool2d accepts with a non-empty output); every other
// call is ATen's max_pool2d, which also raises its errors.
bool max_pool2d_fast_path(const at::Tensor& x, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, bool ceil_mode);

// Calls deeprebirth::max_pool2d through the dispatcher.
at::Tensor max_pool2d(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                      c10::IntArrayRef padding, bool ceil_mode);

}  // namespace deeprebirth::ops
