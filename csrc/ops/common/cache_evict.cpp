#include "ops/common/cache_evict.h"

#include <c10/core/Layout.h>

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define DEEPREBIRTH_HAS_CLFLUSH 1
#endif

namespace at::native {
// Exported by libtorch_cpu (ATen/native/mkldnn/MKLDNNCommon.h, whose header needs ideep, which
// the wheels do not ship): the buffer and size of a oneDNN tensor's opaque storage. Weak: a torch
// built without oneDNN lacks them, and the library must still load there (nothing is evicted).
__attribute__((weak)) void* data_ptr_from_mkldnn(const at::Tensor& mkldnn_tensor);
__attribute__((weak)) int64_t nbytes_from_mkldnn(const at::Tensor& mkldnn_tensor);
}  // namespace at::native

namespace deeprebirth::ops {

bool evict_from_caches(const void* data, size_t bytes) {
#ifdef DEEPREBIRTH_HAS_CLFLUSH
  constexpr uintptr_t kLine = 64;  // the smallest x86-64 cache line; a larger one is hit twice
  const auto begin = reinterpret_cast<uintptr_t>(data) & ~(kLine - 1);
  const auto end = reinterpret_cast<uintptr_t>(data) + bytes;
  for (uintptr_t line = begin; line < end; line += kLine) {
    _mm_clflush(reinterpret_cast<const void*>(line));
  }
  _mm_mfence();
  return true;
#else
  (void)data;
  (void)bytes;
  return false;
#endif
}

bool evict_from_caches(const at::Tensor& t) {
  if (!t.defined()) return true;
  if (t.layout() == c10::kMkldnn) {
    if (&at::native::data_ptr_from_mkldnn == nullptr ||
        &at::native::nbytes_from_mkldnn == nullptr) {
      return false;
    }
    return evict_from_caches(at::native::data_ptr_from_mkldnn(t),
                             static_cast<size_t>(at::native::nbytes_from_mkldnn(t)));
  }
  if (!t.has_storage()) return false;
  return evict_from_caches(t.storage().data(), t.storage().nbytes());
}

}  // namespace deeprebirth::ops
