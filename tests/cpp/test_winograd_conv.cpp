// deeprebirth::winograd_pack / winograd_conv2d from C++ through the dispatcher: against ATen's
// conv2d (+ relu) on odd and even sizes, both layouts and every padding, for F(2x2, 3x3) and
// F(4x4, 3x3), and the argument errors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "deeprebirth_ops.h"

using deeprebirth::ops::winograd_conv2d;
using deeprebirth::ops::winograd_pack;

namespace {

// Absolute tolerance (next to a relative 1e-4) for outputs of magnitude about 1: F(4x4, 3x3)'s
// transforms (factors up to 8 and 1/24) round about ten times more than F(2x2, 3x3)'s.
double atol_for(int64_t tile) { return tile == 2 ? 1e-5 : 1e-4; }

}  // namespace

TEST_CASE("winograd_conv2d matches conv2d on a packed weight", "[winograd_conv]") {
  at::manual_seed(3);
  // (C_in, C_out, H, W, padding h, padding w): odd and even outputs, one row, each padding
  const std::vector<std::vector<int64_t>> layers = {
      {8, 16, 9, 9, 1, 1}, {13, 40, 7, 12, 0, 2}, {32, 24, 3, 5, 2, 0}, {16, 33, 1, 8, 1, 1}};
  for (const int64_t tile : {2, 4}) {
    for (const auto& l : layers) {
      const at::Tensor w = at::randn({l[1], l[0], 3, 3}) / 10.0;
      const at::Tensor bias = at::randn({l[1]});
      const at::Tensor packed = winograd_pack(w, tile);
      CHECK(packed.size(0) == (tile + 2) * (tile + 2));
      for (const auto layout : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
        for (const bool relu : {false, true}) {
          CAPTURE(tile, l, layout == at::MemoryFormat::ChannelsLast, relu);
          const at::Tensor x = at::randn({2, l[0], l[2], l[3]}).contiguous(layout);
          const at::Tensor y = winograd_conv2d(x, packed, bias, l[1], {l[4], l[5]}, relu);
          at::Tensor expected = at::conv2d(x, w, bias, {1, 1}, {l[4], l[5]});
          expected = relu ? at::relu(expected) : expected;
          CHECK(y.is_contiguous(layout));
          CHECK(at::allclose(y, expected, 1e-4, atol_for(tile)));
          const at::Tensor unbiased =
              winograd_conv2d(x, packed, std::nullopt, l[1], {l[4], l[5]}, false);
          CHECK(at::allclose(unbiased, at::conv2d(x, w, {}, {1, 1}, {l[4], l[5]}), 1e-4,
                             atol_for(tile)));
        }
      }
    }
  }
}

TEST_CASE("winograd_conv2d.out writes into a channel slice of a channels_last tensor",
          "[winograd_conv]") {
  using deeprebirth::ops::winograd_conv2d_out;
  at::manual_seed(4);
  const at::Tensor w = at::randn({24, 16, 3, 3}) / 12.0;
  const at::Tensor bias = at::randn({24});
  const at::Tensor x = at::randn({2, 16, 7, 10}).contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor whole = at::full({2, 40, 7, 10}, 7.0).contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor part = whole.narrow(1, 5, 24);
  winograd_conv2d_out(x, winograd_pack(w), bias, 24, {1, 1}, true, part);
  CHECK(at::allclose(part, at::relu(at::conv2d(x, w, bias, {1, 1}, {1, 1})), 1e-4, 1e-5));
  // the other channels are untouched
  CHECK(at::equal(whole.narrow(1, 0, 5), at::full({2, 5, 7, 10}, 7.0)));
  CHECK(at::equal(whole.narrow(1, 29, 11), at::full({2, 11, 7, 10}, 7.0)));
  at::Tensor nchw = at::empty({2, 24, 7, 10});
  CHECK_THROWS_WITH(winograd_conv2d_out(x, winograd_pack(w), bias, 24, {1, 1}, true, nchw),
                    Catch::Contains("channels_last"));
}

TEST_CASE("winograd_conv2d at batch 1 on 1 to 4 threads: tiles or output channels split",
          "[winograd_conv]") {
  using deeprebirth::ops::winograd_conv2d_out;
  at::manual_seed(5);
  // (C_in, C_out, H, W): small images of many channels, whose threads split the output channels
  // (the 16-channel blocks unevenly where C_out / 16 is odd), and larger images split into equal
  // runs of tiles (a part may start and end inside a row of tiles: 7 rows of 4x4 tiles at 28x28,
  // 256 input channels whose chunks hold only a part of a row)
  const std::vector<std::vector<int64_t>> layers = {{64, 416, 14, 14}, {24, 40, 7, 9},
                                                    {96, 120, 7, 7},   {16, 32, 28, 28},
                                                    {48, 64, 28, 28},  {256, 32, 9, 61}};
  const int threads = at::get_num_threads();
  for (const int n : {1, 2, 3, 4}) {
    at::set_num_threads(n);
    for (const int64_t tile : {2, 4}) {
      for (const auto& l : layers) {
        CAPTURE(n, tile, l);
        const at::Tensor w = at::randn({l[1], l[0], 3, 3}) / std::sqrt(9.0 * l[0]);
        const at::Tensor bias = at::randn({l[1]});
        const at::Tensor x =
            at::randn({1, l[0], l[2], l[3]}).contiguous(at::MemoryFormat::ChannelsLast);
        // into a channel slice: a task writes only its own channels
        at::Tensor whole =
            at::full({1, l[1] + 8, l[2], l[3]}, 7.0).contiguous(at::MemoryFormat::ChannelsLast);
        at::Tensor part = whole.narrow(1, 3, l[1]);
        winograd_conv2d_out(x, winograd_pack(w, tile), bias, l[1], {1, 1}, true, part);
        CHECK(at::allclose(part, at::relu(at::conv2d(x, w, bias, {1, 1}, {1, 1})), 1e-4,
                           atol_for(tile)));
        CHECK(at::equal(whole.narrow(1, 0, 3), at::full({1, 3, l[2], l[3]}, 7.0)));
        CHECK(at::equal(whole.narrow(1, 3 + l[1], 5), at::full({1, 5, l[2], l[3]}, 7.0)));
      }
    }
  }
  at::set_num_threads(threads);
}

TEST_CASE("winograd_conv2d errors name the argument", "[winograd_conv][errors]") {
  const at::Tensor w = at::randn({16, 8, 3, 3});
  const at::Tensor packed = winograd_pack(w);
  const at::Tensor x = at::randn({1, 8, 6, 6});
  const auto message = [](const auto& call) {
    try {
      call();
    } catch (const c10::Error& error) {
      return std::string(error.what_without_backtrace());
    }
    return std::string("no error");
  };
  CHECK_THAT(message([&] {
               winograd_conv2d(x, packed, std::nullopt, 24, {1, 1}, false);
             }),
             Catch::Contains("packed_w = winograd_pack(w)"));
  CHECK_THAT(message([&] {
               winograd_conv2d(x.narrow(1, 0, 4), packed, std::nullopt, 16, {1, 1}, false);
             }),
             Catch::Contains("packed_w"));
  CHECK_THAT(message([&] {
               winograd_conv2d(x, packed, at::randn({3}), 16, {1, 1}, false);
             }),
             Catch::Contains("expected b of shape (16)"));
  CHECK_THAT(message([&] {
               winograd_conv2d(x.to(at::kDouble), packed, std::nullopt, 16, {1, 1}, false);
             }),
             Catch::Contains("float32"));
  CHECK_THAT(message([&] {
               winograd_conv2d(at::randn({1, 8, 1, 1}), packed, std::nullopt, 16, {0, 0}, false);
             }),
             Catch::Contains("smaller than the 3x3 kernel"));
  CHECK_THAT(message([&] {
               winograd_pack(at::randn({16, 8, 5, 5}));
             }),
             Catch::Contains("(C_out, C_in, 3, 3)"));
  CHECK_THAT(message([&] { winograd_pack(w, 3); }), Catch::Contains("expected tile 2"));
  at::Tensor infinite = w.clone();
  infinite[3][2][1][1] = std::numeric_limits<float>::infinity();
  CHECK_THAT(message([&] { winograd_pack(infinite); }), Catch::Contains("infinity or NaN"));
}
