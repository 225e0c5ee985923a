// CPU kernel of deeprebirth::conv_pool.
// For now the reference composite; the fused, row-band-tiled kernel replaces it.
#include <torch/library.h>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {
namespace {

at::Tensor conv_pool_cpu(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         c10::string_view pool, c10::IntArrayRef pool_kernel,
                         c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
                         bool ceil_mode, bool relu) {
  const ConvPoolArgs args{stride,      padding,     dilation,     groups,    parse_pool_kind(pool),
                          pool_kernel, pool_stride, pool_padding, ceil_mode, relu};
  return conv_pool_reference(x, w, b, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("conv_pool", &conv_pool_cpu); }

}  // namespace deeprebirth::ops
