// Autograd of deeprebirth::branch_conv: a torch::autograd::Function whose backward calls
// deeprebirth::branch_conv_backward (so torch.compile/AOT autograd see one op for each direction).
//
// torch::autograd::Function flattens an at::TensorList argument into one input per tensor but
// ignores a list of optional tensors, so the biases travel as the list of present biases plus the
// indices of the branches that have one; backward returns one gradient per flattened input.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "ops/branch_conv/branch_conv.h"

namespace deeprebirth::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BranchConvFunction : public torch::autograd::Function<BranchConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList weights,
                            at::TensorList present_biases, const std::vector<int64_t>& biased,
                            c10::IntArrayRef paddings, int64_t stride, bool relu) {
    OptionalTensorList biases;
    for (size_t i = 0; i < weights.size(); ++i) biases.push_back(std::nullopt);
    for (size_t j = 0; j < biased.size(); ++j) biases.set(biased[j], present_biases[j]);

    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = branch_conv(x, weights, biases, paddings, stride, relu);

    variable_list saved = {x, out};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["paddings"] = paddings.vec();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["biased"] = biased;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& out = saved[1];
    const std::vector<at::Tensor> weights(saved.begin() + 2, saved.end());
    const std::vector<int64_t> biased = ctx->saved_data["biased"].toIntVector();
    const auto branches = static_cast<int64_t>(weights.size());
    const auto present = static_cast<int64_t>(biased.size());

    // Flattened inputs: x, weights..., present biases..., biased, paddings, stride, relu.
    variable_list grads(1 + branches + present + 4);
    bool need_w = false, need_b = false;
    for (int64_t i = 0; i < branches; ++i) need_w = need_w || ctx->needs_input_grad(1 + i);
    for (int64_t j = 0; j < present; ++j) {
      need_b = need_b || ctx->needs_input_grad(1 + branches + j);
    }
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), need_w, need_b};
    if (!grad_outputs[0].defined() || !(mask[0] || need_w || need_b)) return grads;

    auto [grad_x, grad_weights, grad_biases] = branch_conv_backward(
        grad_outputs[0], x, out, weights, ctx->saved_data["paddings"].toIntVector(),
        ctx->saved_data["stride"].toInt(), ctx->saved_data["relu"].toBool(), mask);
    grads[0] = grad_x;
    for (int64_t i = 0; need_w && i < branches; ++i) grads[1 + i] = grad_weights[i];
    for (int64_t j = 0; need_b && j < present; ++j) {
      grads[1 + branches + j] = grad_biases[biased[j]];
    }
    return grads;
  }
};

at::Tensor branch_conv_autograd(const at::Tensor& x, at::TensorList weights,
                                const OptionalTensorList& biases, c10::IntArrayRef paddings,
                                int64_t stride, bool relu) {
  // Validate the list lengths before flattening (a bias list of the wrong length would otherwise be
  // silently re-shaped to one entry per branch); the kernel below checks the rest.
  check_branch_conv_list_lengths(weights, biases, paddings);
  std::vector<at::Tensor> present;
  std::vector<int64_t> biased;
  for (size_t i = 0; i < biases.size(); ++i) {
    const std::optional<at::Tensor> b = biases[i];
    if (b.has_value() && b->defined()) {
      present.push_back(*b);
      biased.push_back(static_cast<int64_t>(i));
    }
  }
  return BranchConvFunction::apply(x, weights, at::TensorList(present), biased, paddings, stride,
                                   relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) { m.impl("branch_conv", &branch_conv_autograd); }

}  // namespace deeprebirth::ops
