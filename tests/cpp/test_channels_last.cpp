// channels_last_copy: the packed convolution path's copy of an NCHW input. Against ATen's
// contiguous(ChannelsLast), value for value, on the transposed path (1 to 4 channels, odd sizes,
// several images, pixel runs split between tasks) and the ones it hands to ATen.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <catch2/catch.hpp>
#include <vector>

#include "ops/common/channels_last.h"

using deeprebirth::ops::channels_last_copy;

TEST_CASE("channels_last_copy equals ATen's channels_last copy", "[channels_last]") {
  at::manual_seed(6);
  const int threads = at::get_num_threads();
  for (const int n : {1, 3}) {
    at::set_num_threads(n);
    // (batch, channels, height, width): images under and over a task's 4096 pixels
    const std::vector<std::vector<int64_t>> shapes = {
        {1, 3, 224, 224}, {3, 1, 7, 9}, {2, 2, 65, 67}, {2, 4, 1, 1}, {1, 3, 5, 31}, {2, 5, 9, 9}};
    for (const auto& shape : shapes) {
      CAPTURE(n, shape);
      const at::Tensor x = at::randn(shape);
      const at::Tensor y = channels_last_copy(x);
      CHECK(y.is_contiguous(at::MemoryFormat::ChannelsLast));
      CHECK(at::equal(y, x));
      CHECK(at::equal(y, x.contiguous(at::MemoryFormat::ChannelsLast)));
    }
  }
  at::set_num_threads(threads);
  // already channels_last: the tensor itself; float64 and views: ATen's copy
  const at::Tensor cl = at::randn({1, 3, 8, 8}).contiguous(at::MemoryFormat::ChannelsLast);
  CHECK(channels_last_copy(cl).is_same(cl));
  const at::Tensor doubles = at::randn({1, 3, 8, 8}, at::kDouble);
  CHECK(at::equal(channels_last_copy(doubles), doubles));
  const at::Tensor view = at::randn({1, 6, 8, 8}).narrow(1, 1, 3);
  CHECK(at::equal(channels_last_copy(view), view));
  CHECK(channels_last_copy(view).is_contiguous(at::MemoryFormat::ChannelsLast));
}
