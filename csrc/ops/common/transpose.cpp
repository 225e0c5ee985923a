// Float32 matrix transposes (see transpose.h).
#include "ops/common/transpose.h"

#include <algorithm>

#include "ops/common/cpu_isa.h"

#if defined(DEEPREBIRTH_X86_VARIANTS)
#include <immintrin.h>
#endif

namespace deeprebirth::ops {
namespace {

void transpose_elements(const float* __restrict src, int64_t src_step, int64_t rows, int64_t cols,
                        float* __restrict dst, int64_t dst_step) {
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i < rows; ++i) dst[j * dst_step + i] = src[i * src_step + j];
  }
}

// The rows of a matrix of R rows (1 to 4) interleaved: dst[j * R + i] = src[i * src_step + j],
// the pixels of a few channel planes (an image's colours) into pixels of contiguous channels.
// Inlined into each instruction set's variant, whose compiler vectorises over j with that set's
// shuffles; element by element (transpose_elements) it ran at half of ATen's copy.
template <int R>
__attribute__((always_inline)) inline void interleave_rows(const float* __restrict src,
                                                           int64_t src_step, int64_t cols,
                                                           float* __restrict dst) {
  for (int64_t j = 0; j < cols; ++j) {
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) dst[j * R + i] = src[i * src_step + j];
  }
}

// A transpose too narrow for 16 x 16 blocks: into rows of 1 to 4 contiguous values by
// interleave_rows, any other element by element.
__attribute__((always_inline)) inline void transpose_narrow(const float* src, int64_t src_step,
                                                            int64_t rows, int64_t cols, float* dst,
                                                            int64_t dst_step) {
  if (dst_step == rows) {
    switch (rows) {
      case 1:
        return interleave_rows<1>(src, src_step, cols, dst);
      case 2:
        return interleave_rows<2>(src, src_step, cols, dst);
      case 3:
        return interleave_rows<3>(src, src_step, cols, dst);
      case 4:
        return interleave_rows<4>(src, src_step, cols, dst);
      default:
        break;
    }
  }
  transpose_elements(src, src_step, rows, cols, dst, dst_step);
}

using TransposeFunction = void (*)(const float*, int64_t, int64_t, int64_t, float*, int64_t);

#if defined(DEEPREBIRTH_X86_VARIANTS)
// The 16 x 16 block at src (rows `src_step` apart) transposed into dst (rows `dst_step` apart):
// three rounds of shuffles, within 128-bit lanes and then across them.
__attribute__((target("avx512f"), always_inline)) inline void transpose_16x16(const float* src,
                                                                              int64_t src_step,
                                                                              float* dst,
                                                                              int64_t dst_step) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_step);
  for (int i = 0; i < 16; i += 2) {  // lane L of t[i], t[i + 1]: rows i, i + 1 of columns 4L..4L+3
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // lane L of r[g + k]: rows g..g+3 of column 4L + k
    r[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
    r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xee);
    r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xee);
  }
  for (int k = 0; k < 4; ++k) {  // lanes 0, 2 (0x88) and 1, 3 (0xdd) of r[k], r[4 + k], ...
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {  // row j of dst: column j of the block
    _mm512_storeu_ps(dst + k * dst_step, _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88));
    _mm512_storeu_ps(dst + (4 + k) * dst_step, _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88));
    _mm512_storeu_ps(dst + (8 + k) * dst_step, _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd));
    _mm512_storeu_ps(dst + (12 + k) * dst_step, _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd));
  }
}

// In 16 x 16 blocks, the last block of each dimension overlapping the one before it when 16 does
// not divide it (rewriting equal values).
__attribute__((target("avx512f"))) void transpose_blocks_avx512(const float* src, int64_t src_step,
                                                                int64_t rows, int64_t cols,
                                                                float* dst, int64_t dst_step) {
  if (rows < 16 || cols < 16) return transpose_narrow(src, src_step, rows, cols, dst, dst_step);
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t i = std::min(i0, rows - 16);
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      const int64_t j = std::min(j0, cols - 16);
      transpose_16x16(src + i * src_step + j, src_step, dst + j * dst_step + i, dst_step);
    }
  }
}

#endif

// AVX-512 transposes 16 x 16 blocks in registers; the narrower instruction sets copy elements,
// all but into rows of 1 to 4 values, which each set vectorises (transpose_narrow).
DEEPREBIRTH_CPU_VARIANTS(void, transpose,
                         (const float* src, int64_t src_step, int64_t rows, int64_t cols,
                          float* dst, int64_t dst_step),
                         (transpose_blocks_avx512(src, src_step, rows, cols, dst, dst_step)),
                         (transpose_narrow(src, src_step, rows, cols, dst, dst_step)),
                         (transpose_narrow(src, src_step, rows, cols, dst, dst_step)),
                         (transpose_narrow(src, src_step, rows, cols, dst, dst_step)))

}  // namespace

void transpose_floats(const float* src, int64_t src_step, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_step) {
  static const TransposeFunction function = transpose_for_cpu();
  function(src, src_step, rows, cols, dst, dst_step);
}

}  // namespace deeprebirth::ops
