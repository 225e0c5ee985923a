// deeprebirth::branch_conv — several convolutions over one input, concatenated along channels.
//
// Schema (registered in branch_conv.cpp):
//   branch_conv(Tensor x, Tensor[] weights, Tensor?[] biases, int[] paddings, int stride,
//               bool relu) -> Tensor
// = cat([relu?(conv2d(x, weights[i], biases[i], stride, paddings[i])) for i], dim=1).
// Every branch has groups=1 and dilation 1; paddings[i] is the symmetric padding of branch i, and
// every branch must produce the same spatial size (e.g. 1x1/p0, 3x3/p1, 5x5/p2 at stride 1).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace deeprebirth::ops {

using OptionalTensorList = c10::List<std::optional<at::Tensor>>;

// Sizes implied by validated arguments.
struct BranchConvGeometry {
  int64_t out_h, out_w;                  // common spatial size of every branch
  std::vector<int64_t> channel_offsets;  // first output channel of each branch, plus the total
};

// Requires one bias entry and one padding per weight, and at least one weight. Reads no tensor
// sizes, so it is safe under symbolic shapes (the autograd kernel calls it before flattening).
void check_branch_conv_list_lengths(at::TensorList weights, const OptionalTensorList& biases,
                                    c10::IntArrayRef paddings);

// Validates every argument (non-empty weight list, matching list lengths, ranks, dtypes, devices,
// input channels, positive stride, non-negative paddings, kernels that fit the padded input, equal
// output sizes) and returns the sizes. Errors name the branch index.
BranchConvGeometry check_branch_conv_args(const at::Tensor& x, at::TensorList weights,
                                          const OptionalTensorList& biases,
                                          c10::IntArrayRef paddings, int64_t stride);

// The composite of ATen calls (conv2d per branch -> relu -> cat): the reference.
at::Tensor branch_conv_reference(const at::Tensor& x, at::TensorList weights,
                                 const OptionalTensorList& biases, c10::IntArrayRef paddings,
                                 int64_t stride, bool relu);

// Calls deeprebirth::branch_conv through the dispatcher (so autograd and every backend apply).
at::Tensor branch_conv(const at::Tensor& x, at::TensorList weights,
                       const OptionalTensorList& biases, c10::IntArrayRef paddings, int64_t stride,
                       bool relu);

// Gradients of branch_conv: (grad_x, grad_weights per branch, grad_biases per branch).
// Schema (registered in branch_conv.cpp):
//   branch_conv_backward(Tensor grad_output, Tensor x, Tensor output, Tensor[] weights,
//                        int[] paddings, int stride, bool relu, bool[3] output_mask)
//       -> (Tensor grad_x, Tensor[] grad_weights, Tensor[] grad_biases)
// `output` is branch_conv's result (only read when relu). output_mask says which of x, weights,
// biases need gradients; an unneeded grad_x is undefined (None) and unneeded lists are empty.
// grad_biases holds one entry per branch, whether or not that branch has a bias. grad_x is laid
// out in branch_conv_output_format(x); every gradient of a weight or bias is contiguous.
using BranchConvGrads = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The ATen composite that computes the gradients (one convolution_backward per same-window run);
// the CPU and CUDA kernel of branch_conv_backward.
BranchConvGrads branch_conv_backward_aten(const at::Tensor& grad_output, const at::Tensor& x,
                                          const at::Tensor& output, at::TensorList weights,
                                          c10::IntArrayRef paddings, int64_t stride, bool relu,
                                          std::array<bool, 3> output_mask);

// Calls deeprebirth::branch_conv_backward through the dispatcher.
BranchConvGrads branch_conv_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                     const at::Tensor& output, at::TensorList weights,
                                     c10::IntArrayRef paddings, int64_t stride, bool relu,
                                     std::array<bool, 3> output_mask);

}  // namespace deeprebirth::ops
