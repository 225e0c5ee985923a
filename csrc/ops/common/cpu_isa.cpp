// The process's instruction-set choice (see cpu_isa.h).
#include "ops/common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace deeprebirth::ops {
namespace {

CpuIsa choose_cpu_isa() {
#if defined(DEEPREBIRTH_X86_VARIANTS)
  __builtin_cpu_init();
  const bool runs[] = {true, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                       static_cast<bool>(__builtin_cpu_supports("avx512f"))};  // by CpuIsa
  const CpuIsa widest = runs[2] ? CpuIsa::kAvx512 : runs[1] ? CpuIsa::kAvx2 : CpuIsa::kSse2;
  const char* requested = std::getenv("DEEPREBIRTH_CPU_ISA");
  if (requested == nullptr) requested = std::getenv("DEEPREBIRTH_DIRECT_CONV_ISA");
  if (requested == nullptr) return widest;
  for (CpuIsa isa : {CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kSse2}) {
    if (std::strcmp(requested, cpu_isa_name(isa)) == 0 && runs[static_cast<int>(isa)]) return isa;
  }
  TORCH_WARN("DEEPREBIRTH_CPU_ISA=", requested,
             ": not an instruction set this CPU runs (avx512, avx2 or sse2); using ",
             cpu_isa_name(widest));
  return widest;
#else
  return CpuIsa::kPortable;
#endif
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = choose_cpu_isa();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kSse2:
      return "sse2";
    default:
      return "portable";
  }
}

}  // namespace deeprebirth::ops
