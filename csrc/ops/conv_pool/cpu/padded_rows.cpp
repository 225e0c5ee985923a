// Zero-bordered row copies (see padded_rows.h).
#include "ops/conv_pool/cpu/padded_rows.h"

#include <algorithm>

#include "ops/common/cpu_isa.h"
#include "ops/common/transpose.h"

namespace deeprebirth::ops {
namespace {

// plane c of dst gets value c of each of the `pixels` pixels of C channels at `line`.
template <int C>
__attribute__((always_inline)) inline void split_channels(const float* __restrict line,
                                                          int64_t pixels, float* __restrict dst,
                                                          int64_t channel_step) {
  for (int64_t q = 0; q < pixels; ++q) {
    for (int c = 0; c < C; ++c) dst[c * channel_step + q] = line[q * C + c];
  }
}

// Copies a row of `pixels` interleaved pixels of `channels` into planes `channel_step` apart;
// false when this has no fast loop for `channels`. Inlined into each instruction set's variant.
__attribute__((always_inline)) inline bool split_pixels_in(const float* line, int64_t pixels,
                                                           int64_t channels, float* dst,
                                                           int64_t channel_step) {
  switch (channels) {  // the first layers: grey, RGB, RGBA
    case 1:
      split_channels<1>(line, pixels, dst, channel_step);
      return true;
    case 3:
      split_channels<3>(line, pixels, dst, channel_step);
      return true;
    case 4:
      split_channels<4>(line, pixels, dst, channel_step);
      return true;
    default:
      return false;
  }
}

DEEPREBIRTH_CPU_VARIANTS(bool, split_pixels,
                         (const float* line, int64_t pixels, int64_t channels, float* dst,
                          int64_t channel_step),
                         (split_pixels_in(line, pixels, channels, dst, channel_step)),
                         (split_pixels_in(line, pixels, channels, dst, channel_step)),
                         (split_pixels_in(line, pixels, channels, dst, channel_step)),
                         (split_pixels_in(line, pixels, channels, dst, channel_step)))

bool split_pixels(const float* line, int64_t pixels, int64_t channels, float* dst,
                  int64_t channel_step) {
  static const auto function = split_pixels_for_cpu();
  return function(line, pixels, channels, dst, channel_step);
}

}  // namespace

void copy_padded_rows(const at::Tensor& image, int64_t first, int64_t rows, int64_t padding_h,
                      int64_t padding_w, int64_t padded_w, float* dst, const RowsLayout& to) {
  const float* src = image.const_data_ptr<float>();
  const int64_t channels = image.size(0), height = image.size(1), width = image.size(2);
  const int64_t sc = image.stride(0), sh = image.stride(1), sw = image.stride(2);
  // the image's columns [0, q1) land in padded columns [padding_w, q1 + padding_w)
  const int64_t q1 = std::min(width, padded_w - padding_w);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = first + r - padding_h;
    const bool inside = 0 <= y && y < height && q1 > 0;
    const float* line = inside ? src + y * sh : nullptr;
    if (to.channel_step == 1) {  // pixels of C contiguous channels (column_step == C)
      float* row = dst + r * to.row_step;
      const int64_t begin = inside ? padding_w : padded_w;
      const int64_t end = inside ? q1 + padding_w : padded_w;
      std::fill_n(row, begin * to.column_step, 0.0f);
      if (inside && sw == 1) {  // planes into pixels
        transpose_floats(line, sc, channels, end - begin, row + begin * channels, channels);
      } else {
        for (int64_t q = begin; q < end; ++q) {
          float* pixel = row + q * to.column_step;
          const float* from = line + (q - padding_w) * sw;
          if (sc == 1) {  // channels-last, or a channel slice of it: one copy per pixel
            std::copy_n(from, channels, pixel);
          } else {
            for (int64_t c = 0; c < channels; ++c) pixel[c] = from[c * sc];
          }
        }
      }
      std::fill(row + end * to.column_step, row + padded_w * to.column_step, 0.0f);
      continue;
    }
    // planes (column_step 1): each channel's zero borders, then the image's columns
    for (int64_t c = 0; c < channels; ++c) {
      float* row = dst + c * to.channel_step + r * to.row_step;
      std::fill_n(row, inside ? padding_w : padded_w, 0.0f);
      if (inside) std::fill(row + q1 + padding_w, row + padded_w, 0.0f);
    }
    if (!inside) continue;
    float* first_column = dst + r * to.row_step + padding_w;
    if (sc == 1 && sw == channels &&
        split_pixels(line, q1, channels, first_column, to.channel_step)) {
      continue;  // channels-last input
    }
    for (int64_t c = 0; c < channels; ++c) {
      float* row = first_column + c * to.channel_step;
      const float* from = line + c * sc;
      for (int64_t q = 0; q < q1; ++q) row[q] = from[q * sw];
    }
  }
}

}  // namespace deeprebirth::ops
