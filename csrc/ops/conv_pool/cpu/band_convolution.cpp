// Band convolution of the conv_pool CPU kernel (see band_convolution.h).
#include "ops/conv_pool/cpu/band_convolution.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace deeprebirth::ops {

namespace {

using PointwiseConvolutionFn = at::Tensor(const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&, c10::IntArrayRef,
                                          c10::IntArrayRef, c10::IntArrayRef, int64_t,
                                          c10::string_view, c10::List<std::optional<at::Scalar>>,
                                          std::optional<c10::string_view>);

// oneDNN's convolution on a packed weight (the op PyTorch's inductor uses on CPU), when this torch
// registers it.
const std::optional<c10::TypedOperatorHandle<PointwiseConvolutionFn>>& pointwise_convolution() {
  static const std::optional<c10::TypedOperatorHandle<PointwiseConvolutionFn>> op =
      []() -> std::optional<c10::TypedOperatorHandle<PointwiseConvolutionFn>> {
    const auto handle =
        c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
    if (!handle.has_value() || !at::hasMKLDNN()) return std::nullopt;
    return handle->typed<PointwiseConvolutionFn>();
  }();
  return op;
}

}  // namespace

at::Tensor conv_rows(const at::Tensor& x, const at::Tensor& w, const ConvPoolArgs& args,
                     int64_t padding_h) {
  return at::conv2d(x.contiguous(at::MemoryFormat::ChannelsLast), w, /*bias=*/{}, args.stride,
                    {padding_h, args.padding[1]}, args.dilation, args.groups)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

BandConvolution::BandConvolution(const at::Tensor& w, const ConvPoolArgs& args,
                                 c10::IntArrayRef band_shape)
    : weight_(w), args_(args), padding_{0, args.padding[1]} {
  if (w.scalar_type() != at::kFloat || !at::globalContext().userEnabledMkldnn() ||
      !pointwise_convolution().has_value()) {
    return;
  }
  packed_weight_ =
      at::mkldnn_reorder_conv2d_weight(w.detach().contiguous().to_mkldnn(), padding_, args.stride,
                                       args.dilation, args.groups, band_shape);
}

at::Tensor BandConvolution::operator()(const at::Tensor& input) const {
  if (!packed()) return conv_rows(input, weight_, args_, 0);
  return pointwise_convolution()
      ->call(input.contiguous(at::MemoryFormat::ChannelsLast), packed_weight_, std::nullopt,
             padding_, args_.stride, args_.dilation, args_.groups, "none",
             c10::List<std::optional<at::Scalar>>(), std::nullopt)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace deeprebirth::ops
