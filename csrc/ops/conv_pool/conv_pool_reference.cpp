// The unfused reference of conv_pool, composed of ATen calls.
#include <ATen/ATen.h>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {

at::Tensor conv_pool_reference(const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, const ConvPoolArgs& args) {
  check_conv_pool_args(x, w, b, args);
  at::Tensor y = at::conv2d(x, w, b, args.stride, args.padding, args.dilation, args.groups);
  if (args.relu) y = at::relu(y);
  if (args.pool == PoolKind::Max) {
    return at::max_pool2d(y, args.pool_kernel, args.pool_stride, args.pool_padding, {1, 1},
                          args.ceil_mode);
  }
  return at::avg_pool2d(y, args.pool_kernel, args.pool_stride, args.pool_padding, args.ceil_mode,
                        /*count_include_pad=*/true);
}

}  // namespace deeprebirth::ops
