// Schema, argument checks and dispatcher entry of deeprebirth::branch_conv.
#include "ops/branch_conv/branch_conv.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

#include "ops/common/arg_checks.h"

namespace deeprebirth::ops {

namespace {
constexpr const char* kOp = "branch_conv";
}  // namespace

void check_branch_conv_list_lengths(at::TensorList weights, const OptionalTensorList& biases,
                                    c10::IntArrayRef paddings) {
  const auto branches = static_cast<int64_t>(weights.size());
  TORCH_CHECK(branches > 0, kOp, ": expected weights to hold at least one tensor, but it is empty");
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == branches, kOp,
              ": expected biases to hold one entry (a tensor or None) per branch, ", branches,
              " in all, but got ", biases.size());
  TORCH_CHECK(static_cast<int64_t>(paddings.size()) == branches, kOp,
              ": expected paddings to hold one value per branch, ", branches, " in all, but got ",
              paddings.size(), " (", paddings, ")");
}

BranchConvGeometry check_branch_conv_args(const at::Tensor& x, at::TensorList weights,
                                          const OptionalTensorList& biases,
                                          c10::IntArrayRef paddings, int64_t stride) {
  check_4d_float(x, kOp, "x");
  check_branch_conv_list_lengths(weights, biases, paddings);
  const auto branches = static_cast<int64_t>(weights.size());
  TORCH_CHECK(stride > 0, kOp, ": expected stride > 0, but got ", stride);

  BranchConvGeometry g{};
  g.channel_offsets.reserve(branches + 1);
  g.channel_offsets.push_back(0);
  for (int64_t i = 0; i < branches; ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    const at::Tensor& w = weights[i];
    check_4d_float(w, kOp, name);
    check_same_dtype_and_device(w, name, x, "x", kOp);
    TORCH_CHECK(w.size(1) == x.size(1), kOp, ": branch ", i, ": expected ", name, " to take ",
                x.size(1), " input channels (x.size(1)), but got ", name, " of shape ",
                shape_string(w.sizes()));
    TORCH_CHECK(w.size(0) > 0, kOp, ": branch ", i, ": expected ", name,
                " to have at least one output channel, but got shape ", shape_string(w.sizes()));
    const std::optional<at::Tensor> b = biases[i];
    if (b.has_value() && b->defined()) {
      const std::string bias_name = "biases[" + std::to_string(i) + "]";
      TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), kOp, ": branch ", i, ": expected ",
                  bias_name, " to be a 1-D tensor of ", w.size(0), " values, but got shape ",
                  shape_string(b->sizes()));
      check_same_dtype_and_device(*b, bias_name, x, "x", kOp);
    }
    TORCH_CHECK(paddings[i] >= 0, kOp, ": branch ", i, ": expected paddings[", i,
                "] >= 0, but got ", paddings[i]);
    int64_t out[2];
    for (int d = 0; d < 2; ++d) {
      out[d] = conv_output_size(x.size(2 + d), w.size(2 + d), stride, paddings[i], 1);
      TORCH_CHECK(out[d] > 0, kOp, ": branch ", i, ": the kernel of ", name, " (size ",
                  w.size(2 + d), ") is larger than the padded input (size ", x.size(2 + d),
                  " + 2 * padding ", paddings[i], ") along dimension ", 2 + d);
    }
    if (i == 0) {
      g.out_h = out[0];
      g.out_w = out[1];
    } else {
      TORCH_CHECK(out[0] == g.out_h && out[1] == g.out_w, kOp, ": branch ", i, " produces a ",
                  out[0], "x", out[1], " output, but branch 0 produces ", g.out_h, "x", g.out_w,
                  "; every branch must produce the same spatial size (kernel ", w.size(2), "x",
                  w.size(3), ", padding ", paddings[i], ", stride ", stride, ")");
    }
    g.channel_offsets.push_back(g.channel_offsets.back() + w.size(0));
  }
  return g;
}

at::Tensor branch_conv(const at::Tensor& x, at::TensorList weights,
                       const OptionalTensorList& biases, c10::IntArrayRef paddings, int64_t stride,
                       bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprebirth::branch_conv", "")
                       .typed<decltype(branch_conv)>();
  return op.call(x, weights, biases, paddings, stride, relu);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def(
      "branch_conv(Tensor x, Tensor[] weights, Tensor?[] biases, int[] paddings, int stride, "
      "bool relu) -> Tensor");
  m.def(
      "branch_conv_backward(Tensor grad_output, Tensor x, Tensor output, Tensor[] weights, "
      "int[] paddings, int stride, bool relu, bool[3] output_mask) -> (Tensor grad_x, "
      "Tensor[] grad_weights, Tensor[] grad_biases)");
}

}  // namespace deeprebirth::ops
