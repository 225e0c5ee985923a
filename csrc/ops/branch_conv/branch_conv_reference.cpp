// The reference of branch_conv, composed of ATen calls.
#include <ATen/ATen.h>

#include <vector>

#include "ops/branch_conv/branch_conv.h"

namespace deeprebirth::ops {

at::Tensor branch_conv_reference(const at::Tensor& x, at::TensorList weights,
                                 const OptionalTensorList& biases, c10::IntArrayRef paddings,
                                 int64_t stride, bool relu) {
  check_branch_conv_args(x, weights, biases, paddings, stride);
  std::vector<at::Tensor> outputs;
  outputs.reserve(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t p = paddings[i];
    at::Tensor y = at::conv2d(x, weights[i], biases[i], {stride, stride}, {p, p});
    outputs.push_back(relu ? at::relu(y) : y);
  }
  return at::cat(outputs, 1);
}

}  // namespace deeprebirth::ops
