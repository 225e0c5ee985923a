// Vector types and instruction-set choice of the CPU kernels compiled once per instruction set
// (direct_conv's tiles, conv_pool's convolutions and its float32 max-pooling epilogue).
#pragma once

#include <string>

#include "ops/direct_conv/direct_conv.h"

namespace deeprebirth::ops {

// `Width` float32 lanes in one vector register: 16 (AVX-512), 8 (AVX2), 4 (SSE, NEON). Unaligned
// loads and stores (aligned(4)). Each instruction set gets its own width: GCC keeps a vector wider
// than the target's registers in memory, several times slower.
template <int Width>
struct Vector {
  typedef float type __attribute__((vector_size(Width * sizeof(float)), aligned(4)));
};

// The one of three variants of a function, compiled for AVX-512, AVX2 + FMA and SSE2, that
// matches the instruction set direct_conv chose (the CPU's widest, or DEEPREBIRTH_DIRECT_CONV_ISA).
// x86-64 only: elsewhere callers compile their portable variant.
template <typename Function>
Function for_direct_conv_isa(Function avx512, Function avx2, Function sse2) {
  const std::string isa = direct_conv_isa();
  if (isa == "avx512") return avx512;
  if (isa == "avx2") return avx2;
  return sse2;
}

}  // namespace deeprebirth::ops
