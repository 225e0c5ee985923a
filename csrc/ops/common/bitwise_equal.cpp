// Schema and CPU kernel of deeprebirth::bitwise_equal (see bitwise_equal.h).
#include "ops/common/bitwise_equal.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

namespace deeprebirth::ops {
namespace {

// Bytes compared per parallel chunk: below this a thread costs more than it saves.
constexpr int64_t kChunkBytes = int64_t{1} << 18;

// Whether the `bytes` bytes at a and b agree.
bool same_bytes(const char* a, const char* b, int64_t bytes) {
  if (bytes <= kChunkBytes) return std::memcmp(a, b, bytes) == 0;
  const int64_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  return at::parallel_reduce(
      0, chunks, 1, true,
      [&](int64_t begin, int64_t end, bool same) {
        const int64_t first = begin * kChunkBytes, last = std::min(bytes, end * kChunkBytes);
        return same && std::memcmp(a + first, b + first, last - first) == 0;
      },
      [](bool x, bool y) { return x && y; });
}

}  // namespace

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.layout() == at::kStrided &&
                  b.layout() == at::kStrided,
              "bitwise_equal: expected strided CPU tensors, but got a on ", a.device(), " (",
              a.layout(), ") and b on ", b.device(), " (", b.layout(), ")");
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const int64_t bytes = a.numel() * static_cast<int64_t>(a.element_size());
  if (bytes == 0) return true;
  // A dense tensor's elements fill [data_ptr, data_ptr + bytes) in the order of its strides.
  if (a.strides() == b.strides() && a.is_non_overlapping_and_dense()) {
    return same_bytes(static_cast<const char*>(a.const_data_ptr()),
                      static_cast<const char*>(b.const_data_ptr()), bytes);
  }
  const at::Tensor dense_a = a.contiguous(), dense_b = b.contiguous();
  return same_bytes(static_cast<const char*>(dense_a.const_data_ptr()),
                    static_cast<const char*>(dense_b.const_data_ptr()), bytes);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) { m.def("bitwise_equal(Tensor a, Tensor b) -> bool"); }

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("bitwise_equal", &bitwise_equal); }

}  // namespace deeprebirth::ops
