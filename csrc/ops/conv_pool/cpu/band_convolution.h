// The convolution of conv_pool's row bands on the CPU.
//
// Every band of a call convolves with the same weight. For float32 on a torch built with oneDNN,
// the weight is reordered into oneDNN's blocked layout once per call and every band runs
// mkldnn::_convolution_pointwise on that packed copy; at::conv2d would reorder it again for each
// band, a cost row bands multiply. Other dtypes, and
// builds without oneDNN, convolve each band with at::conv2d. (Layers that
// DirectBandConvolution or WinogradConvolution take never come here.)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

#include "ops/conv_pool/conv_pool.h"

namespace deeprebirth::ops {

// The convolution of x (any layout) with w and no bias, vertical padding `padding_h`, horizontal
// padding and the rest from `args`; channels-last contiguous. The fallback of BandConvolution and
// the whole-batch convolution of the CPU kernel.
at::Tensor conv_rows(const at::Tensor& x, const at::Tensor& w, const ConvPoolArgs& args,
                     int64_t padding_h);

class BandConvolution {
 public:
  // `band_shape`: the input shape (N, C_in, rows, W) of a typical band, which oneDNN's packed
  // layout is chosen for (bands of other heights still give exact results).
  BandConvolution(const at::Tensor& w, const ConvPoolArgs& args, c10::IntArrayRef band_shape);

  // The convolution rows of a band's input rows (band_input: vertical padding already added),
  // without bias, channels-last contiguous.
  at::Tensor operator()(const at::Tensor& input) const;

  // Whether the bands run on oneDNN's packed weight (false: at::conv2d per band).
  bool packed() const { return packed_weight_.defined(); }

 private:
  const at::Tensor& weight_;
  const ConvPoolArgs& args_;
  std::vector<int64_t> padding_;  // {0, args.padding[1]}: the rows come padded
  at::Tensor packed_weight_;      // undefined unless packed()
};

}  // namespace deeprebirth::ops
