// Argument checks and output-size arithmetic shared by every deeprebirth operator.
//
// Each check raises c10::Error (a Python RuntimeError) whose message names the operator, the
// argument, the expected value and the actual value, e.g.
//   "conv_pool: expected x to be a 4-D tensor (N, C, H, W), but got a 3-D tensor of shape"
//   " [3, 8, 8]".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace deeprebirth::ops {

// Requires `t` to be a 4-D floating-point tensor.
void check_4d_float(const at::Tensor& t, const char* op, const std::string& name);

// Requires `t` to have the same dtype and device as `ref`.
void check_same_dtype_and_device(const at::Tensor& t, const std::string& name,
                                 const at::Tensor& ref, const char* ref_name, const char* op);

// Whether autograd would record a convolution of these (grad mode on and x, w or b requiring
// grad): the inference kernels' condition for running (or, in their Autograd entries, refusing).
bool conv_needs_grad(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// Requires exactly `expected_len` entries, each > 0 (or >= 0 when allow_zero).
void check_int_list(c10::IntArrayRef values, int64_t expected_len, bool allow_zero, const char* op,
                    const char* name);

// Output length of a convolution along one dimension (PyTorch's rule). Precondition: stride > 0.
// Returns a value <= 0 when the dilated kernel is larger than the padded input.
inline int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                                int64_t dilation) {
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t padded = in + 2 * padding;
  if (padded < span) return 0;
  return (padded - span) / stride + 1;
}

// Output shape (N, C_out, H_out, W_out) of conv2d(x, w) with these (2-entry) stride, padding and
// dilation.
inline std::vector<int64_t> conv2d_output_shape(const at::Tensor& x, const at::Tensor& w,
                                                c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                c10::IntArrayRef dilation) {
  return {x.size(0), w.size(0),
          conv_output_size(x.size(2), w.size(2), stride[0], padding[0], dilation[0]),
          conv_output_size(x.size(3), w.size(3), stride[1], padding[1], dilation[1])};
}

// Output length of a max/avg pooling along one dimension, identical to ATen's
// pooling_output_shape (dilation 1): ceil_mode may add one window, but never one that starts
// inside the right padding. Precondition: stride > 0.
inline int64_t pool_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                                bool ceil_mode) {
  const int64_t numerator = in + 2 * padding - kernel + (ceil_mode ? stride - 1 : 0);
  // floor division that rounds towards -inf, as ATen's div_rtn does
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + padding) --out;
  return out;
}

// "[a, b, c]" for error messages.
std::string shape_string(c10::IntArrayRef sizes);

}  // namespace deeprebirth::ops
