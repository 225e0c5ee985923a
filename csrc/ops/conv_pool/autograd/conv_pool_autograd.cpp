// Autograd of deeprebirth::conv_pool: saves only the inputs x, w, b; the backward calls
// deeprebirth::conv_pool_backward, which recomputes the convolution, so the pre-pool activation
// is never kept between the forward and the backward pass.
// conv_pool_backward is differentiable in turn (double backward, create_graph=True): where
// autograd needs its gradient it runs as the ATen composite conv_pool_backward_recompute, whose
// every step ATen differentiates, and as the backend kernel otherwise.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {
namespace {

class ConvPoolFunction : public torch::autograd::Function<ConvPoolFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, const std::optional<at::Tensor>& b,
                            c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups, c10::string_view pool,
                            c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride,
                            c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
    const bool has_bias = b.has_value() && b->defined();
    ctx->save_for_backward({x, w, has_bias ? *b : at::Tensor()});
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["pool"] = std::string(pool);
    ctx->saved_data["pool_kernel"] = pool_kernel.vec();
    ctx->saved_data["pool_stride"] = pool_stride.vec();
    ctx->saved_data["pool_padding"] = pool_padding.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["relu"] = relu;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv_pool(x, w, b, stride, padding, dilation, groups, pool, pool_kernel, pool_stride,
                     pool_padding, ceil_mode, relu);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& data = ctx->saved_data;
    const bool has_bias = data.at("has_bias").toBool();
    const std::optional<at::Tensor> b =
        has_bias ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const auto stride = data.at("stride").toIntVector();
    const auto padding = data.at("padding").toIntVector();
    const auto dilation = data.at("dilation").toIntVector();
    const auto pool_kernel = data.at("pool_kernel").toIntVector();
    const auto pool_stride = data.at("pool_stride").toIntVector();
    const auto pool_padding = data.at("pool_padding").toIntVector();
    const std::string pool = data.at("pool").toStringRef();
    auto [grad_x, grad_w, grad_b] =
        conv_pool_backward(grads[0], saved[0], saved[1], b, stride, padding, dilation,
                           data.at("groups").toInt(), pool, pool_kernel, pool_stride, pool_padding,
                           data.at("ceil_mode").toBool(), data.at("relu").toBool());
    // One gradient per forward argument; the non-tensor ones get none.
    torch::autograd::variable_list result(13);
    result[0] = grad_x;
    result[1] = grad_w;
    result[2] = has_bias ? grad_b : at::Tensor();
    return result;
  }
};

at::Tensor conv_pool_autograd(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                              c10::string_view pool, c10::IntArrayRef pool_kernel,
                              c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
                              bool ceil_mode, bool relu) {
  return ConvPoolFunction::apply(x, w, b, stride, padding, dilation, groups, pool, pool_kernel,
                                 pool_stride, pool_padding, ceil_mode, relu);
}

bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_autograd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& b, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pool, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, bool ceil_mode, bool relu) {
  if (at::GradMode::is_enabled() &&
      (needs_grad(grad) || needs_grad(x) || needs_grad(w) || (b.has_value() && needs_grad(*b)))) {
    return conv_pool_backward_recompute(grad, x, w, b, stride, padding, dilation, groups, pool,
                                        pool_kernel, pool_stride, pool_padding, ceil_mode, relu);
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return conv_pool_backward(grad, x, w, b, stride, padding, dilation, groups, pool, pool_kernel,
                            pool_stride, pool_padding, ceil_mode, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, Autograd, m) {
  m.impl("conv_pool", &conv_pool_autograd);
  m.impl("conv_pool_backward", &conv_pool_backward_autograd);
}

}  // namespace deeprebirth::ops
