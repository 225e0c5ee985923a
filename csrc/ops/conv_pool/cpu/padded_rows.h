// Zero-bordered copies of a few input rows: what conv_pool's CPU convolutions of one band read, so
// that their inner loops need no bounds checks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace deeprebirth::ops {

// Where copy_padded_rows puts value (channel c, row r, column q): dst[c * channel_step +
// r * row_step + q * column_step]. Either planes (column_step 1) or pixels of contiguous channels
// (channel_step 1, column_step C).
struct RowsLayout {
  int64_t channel_step, row_step, column_step;
};

// Copies the padded rows [first, first + rows) of `image` (C, H, W; float32, any strides), columns
// [0, padded_w), to dst laid out as `to`. Padded row r is image row r - padding_h and padded
// column q image column q - padding_w; everything outside the image is zero.
void copy_padded_rows(const at::Tensor& image, int64_t first, int64_t rows, int64_t padding_h,
                      int64_t padding_w, int64_t padded_w, float* dst, const RowsLayout& to);

}  // namespace deeprebirth::ops
