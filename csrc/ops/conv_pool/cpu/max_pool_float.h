// conv_pool's CPU epilogue for float32 max pooling, in explicit vectors of the CPU's widest
// instruction set: every layer our own convolutions take (GoogLeNet conv1 / conv2, the ResNet-50
// stem) ends in it.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/conv_pool/conv_pool.h"
#include "ops/conv_pool/conv_pool_tiling.h"

namespace deeprebirth::ops {

// bias_relu_pool_rows_cpu (see bias_relu_pool.h) for float32 tiles and args.pool == Max, same
// preconditions. Returns false, leaving rows of the band unwritten, when the window rows hold a
// NaN: ATen's max pooling propagates it, which the generic epilogue does.
bool bias_relu_max_pool_float_rows(const at::Tensor& tile, int64_t tile_row0,
                                   const at::Tensor& bias, const RowBand& band,
                                   const ConvPoolGeometry& geometry, const ConvPoolArgs& args,
                                   const at::Tensor& out_image);

}  // namespace deeprebirth::ops
