// Copying a tensor into channels_last memory format faster than ATen's copy for images of a few
// channels (a network's input), which the packed convolution path reads in channels_last.
#pragma once

#include <ATen/core/Tensor.h>

namespace deeprebirth::ops {

// x in channels_last memory format: x itself where it already is, else a copy. A float32 CPU
// NCHW-contiguous x of 1 to 4 channels is transposed by transpose_floats in parallel over its
// pixels (2.5x ATen's copy of a 3x224x224 image on AVX-512; docs/kernels.md); any other through
// x.contiguous(at::MemoryFormat::ChannelsLast).
at::Tensor channels_last_copy(const at::Tensor& x);

}  // namespace deeprebirth::ops
