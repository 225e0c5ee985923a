// Float32 matrix transposes: channel planes into pixels of contiguous channels (conv_pool's
// Winograd input rows of an NCHW image, channels_last_copy) and back (conv_pool's pooled rows into
// an NCHW output).
#pragma once

#include <cstdint>

namespace deeprebirth::ops {

// dst[j * dst_step + i] = src[i * src_step + j] for i < rows, j < cols. On AVX-512 in 16 x 16
// blocks of shuffles (whole cache lines read and written); into rows of 1 to 4 contiguous values
// (dst_step == rows) vectorised on every instruction set; element by element otherwise. src and
// dst do not overlap.
void transpose_floats(const float* src, int64_t src_step, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_step);

}  // namespace deeprebirth::ops
