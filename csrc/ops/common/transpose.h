// Float32 matrix transposes for conv_pool's CPU kernel: channel planes into pixels of contiguous
// channels (the Winograd convolution's input rows of an NCHW image) and back (pooled rows into an
// NCHW output).
#pragma once

#include <cstdint>

namespace deeprebirth::ops {

// dst[j * dst_step + i] = src[i * src_step + j] for i < rows, j < cols. On AVX-512 in 16 x 16
// blocks of shuffles (whole cache lines read and written), element by element elsewhere and when
// rows or cols is under 16. src and dst do not overlap.
void transpose_floats(const float* src, int64_t src_step, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_step);

}  // namespace deeprebirth::ops
