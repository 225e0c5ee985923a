// evict_from_caches: what the packed convolution's kernel timing runs before each timed call. It
// must reach a oneDNN tensor's opaque buffer and leave every value as it was.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include "ops/common/cache_evict.h"

using deeprebirth::ops::evict_from_caches;

namespace {
constexpr bool kHasClflush =
#if defined(__x86_64__) || defined(_M_X64)
    true;
#else
    false;
#endif
}  // namespace

TEST_CASE("evict_from_caches keeps dense and oneDNN tensors' values", "[cache_evict]") {
  at::manual_seed(0);
  const at::Tensor dense = at::randn({37, 5, 3, 3});
  const at::Tensor before = dense.clone();
  CHECK(evict_from_caches(dense) == kHasClflush);
  CHECK(at::equal(dense, before));
  // a view evicts its whole storage, from an unaligned start
  CHECK(evict_from_caches(dense.narrow(0, 3, 5)) == kHasClflush);
  CHECK(at::equal(dense, before));
  if (at::hasMKLDNN()) {
    const at::Tensor opaque = dense.to_mkldnn();
    CHECK(evict_from_caches(opaque) == kHasClflush);
    CHECK(at::equal(opaque.to_dense(), before));
  }
  CHECK(evict_from_caches(at::Tensor()));  // nothing to evict
  CHECK(evict_from_caches(nullptr, 0) == kHasClflush);
}
