// One mechanism for code compiled once per CPU instruction set, in the manner of ATen's
// DispatchStub (aten/src/ATen/native/cpu/README.md): a kernel is written once as a template (or
// inline function) over the vector width, DEEPREBIRTH_CPU_VARIANTS compiles it for AVX-512, AVX2 +
// FMA and SSE2 (x86-64) or once for the baseline (elsewhere), and cpu_isa() chooses one instruction
// set for the whole process, which DEEPREBIRTH_CPU_ISA overrides for every such path alike (the
// per-ISA tests run each one that way).
#pragma once

namespace deeprebirth::ops {

enum class CpuIsa { kSse2, kAvx2, kAvx512, kPortable };

// The instruction set of every per-ISA path in this process, chosen when first asked: on x86-64
// the widest the CPU runs, told by feature (AVX-512F; AVX2 and FMA; SSE2) rather than CPU model,
// or the one DEEPREBIRTH_CPU_ISA names (avx512, avx2, sse2; DEEPREBIRTH_DIRECT_CONV_ISA is its
// former name) where the CPU runs it, with a warning where it does not; kPortable elsewhere.
CpuIsa cpu_isa();

// "avx512", "avx2", "sse2" or "portable".
const char* cpu_isa_name(CpuIsa isa);

// `Width` float32 lanes in one vector register: 16 (AVX-512), 8 (AVX2), 4 (SSE, NEON). Unaligned
// loads and stores (aligned(4)). Each instruction set gets its own width: GCC keeps a vector wider
// than the target's registers in memory, several times slower.
template <int Width>
struct Vector {
  typedef float type __attribute__((vector_size(Width * sizeof(float)), aligned(4)));
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DEEPREBIRTH_X86_VARIANTS 1

// The one of three variants (compiled for AVX-512, AVX2 + FMA and SSE2) that cpu_isa() chose.
template <typename Function>
Function for_cpu_isa(Function avx512, Function avx2, Function sse2) {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512:
      return avx512;
    case CpuIsa::kAvx2:
      return avx2;
    default:
      return sse2;
  }
}

// Defines `Return name_avx512 params`, `name_avx2` and `name_sse2`, each compiled for its
// instruction set and returning its expression (parenthesised, so that template arguments may
// hold commas), and `name_for_cpu()`, the pointer to the variant cpu_isa() chose. The expressions
// call always_inline templates, so each variant's body is compiled with its own vector width.
// Elsewhere than x86-64 only `portable` is compiled. Callers keep the pointer in a static.
#define DEEPREBIRTH_CPU_VARIANTS(Return, name, params, avx512, avx2, sse2, portable) \
  __attribute__((target("avx512f"))) Return name##_avx512 params { return avx512; }  \
  __attribute__((target("avx2,fma"))) Return name##_avx2 params { return avx2; }     \
  Return name##_sse2 params { return sse2; }                                         \
  auto name##_for_cpu() { return for_cpu_isa(&name##_avx512, &name##_avx2, &name##_sse2); }
#else
#define DEEPREBIRTH_CPU_VARIANTS(Return, name, params, avx512, avx2, sse2, portable) \
  Return name##_portable params { return portable; }                                 \
  auto name##_for_cpu() { return &name##_portable; }
#endif

}  // namespace deeprebirth::ops
