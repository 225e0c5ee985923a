// The operators, called from C++ through the dispatcher, against ATen's unfused sequences.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "deeprebirth_ops.h"

namespace {

bool close(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && at::allclose(a, b, /*rtol=*/1e-4, /*atol=*/1e-5);
}

struct ConvPoolCase {
  std::vector<int64_t> x, w;
  int64_t stride, padding, groups;
  std::string pool;
  int64_t pool_kernel, pool_stride, pool_padding;
  bool ceil_mode, relu;
};

}  // namespace

TEST_CASE("conv_pool matches conv2d -> relu -> pool", "[conv_pool]") {
  at::manual_seed(0);
  const std::vector<ConvPoolCase> cases = {
      {{1, 3, 224, 224}, {64, 3, 7, 7}, 2, 3, 1, "max", 3, 2, 0, true, true},   // GoogLeNet conv1
      {{2, 64, 28, 28}, {192, 64, 3, 3}, 1, 1, 1, "max", 3, 2, 0, true, true},  // conv2 (small)
      {{3, 8, 17, 13}, {6, 4, 3, 3}, 2, 1, 2, "avg", 3, 2, 1, false, false},
      {{0, 4, 9, 9}, {4, 4, 1, 1}, 1, 0, 1, "max", 2, 2, 0, false, true},
  };
  for (const auto& c : cases) {
    const at::Tensor x = at::randn(c.x);
    // 1/sqrt(fan_in)-scaled weights: the fused kernel's tiled accumulation order differs from
    // the whole-image one by float rounding, which unit-variance weights inflate past atol.
    const at::Tensor w = at::randn(c.w) / std::sqrt(static_cast<double>(c.w[1] * c.w[2] * c.w[3]));
    const at::Tensor b = at::randn({c.w[0]});
    const at::Tensor y = deeprebirth::ops::conv_pool(
        x, w, b, {c.stride, c.stride}, {c.padding, c.padding}, {1, 1}, c.groups, c.pool,
        {c.pool_kernel, c.pool_kernel}, {c.pool_stride, c.pool_stride},
        {c.pool_padding, c.pool_padding}, c.ceil_mode, c.relu);
    at::Tensor expected = at::conv2d(x, w, b, c.stride, c.padding, 1, c.groups);
    if (c.relu) expected = at::relu(expected);
    expected = c.pool == "max" ? at::max_pool2d(expected, c.pool_kernel, c.pool_stride,
                                                c.pool_padding, 1, c.ceil_mode)
                               : at::avg_pool2d(expected, c.pool_kernel, c.pool_stride,
                                                c.pool_padding, c.ceil_mode, true);
    CAPTURE(c.x, c.w, c.pool);
    CHECK(close(y, expected));
  }
}

TEST_CASE("branch_conv matches per-branch conv2d + cat", "[branch_conv]") {
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 192, 28, 28});  // inception_3a's input
  const std::vector<at::Tensor> weights = {at::randn({64, 192, 1, 1}), at::randn({96, 192, 1, 1}),
                                           at::randn({16, 192, 3, 3})};
  c10::List<std::optional<at::Tensor>> biases;
  biases.push_back(at::randn({64}));
  biases.push_back(std::nullopt);
  biases.push_back(at::randn({16}));
  const std::vector<int64_t> paddings = {0, 0, 1};
  for (const bool relu : {false, true}) {
    const at::Tensor y = deeprebirth::ops::branch_conv(x, weights, biases, paddings, 1, relu);
    std::vector<at::Tensor> parts;
    for (size_t i = 0; i < weights.size(); ++i) {
      at::Tensor part = at::conv2d(x, weights[i], biases[i], 1, paddings[i]);
      parts.push_back(relu ? at::relu(part) : part);
    }
    CHECK(close(y, at::cat(parts, 1)));
  }
}

TEST_CASE("bad arguments raise errors that name the argument", "[errors]") {
  const at::Tensor x = at::randn({1, 4, 8, 8});
  const at::Tensor w = at::randn({4, 4, 3, 3});
  CHECK_THROWS_WITH(deeprebirth::ops::conv_pool(x, w, std::nullopt, {0, 1}, {0, 0}, {1, 1}, 1,
                                                "max", {2, 2}, {2, 2}, {0, 0}, false, true),
                    Catch::Contains("stride"));
  CHECK_THROWS_WITH(deeprebirth::ops::conv_pool(x, w, std::nullopt, {1, 1}, {0, 0}, {1, 1}, 1,
                                                "median", {2, 2}, {2, 2}, {0, 0}, false, true),
                    Catch::Contains("pool"));
  c10::List<std::optional<at::Tensor>> no_biases;
  CHECK_THROWS_WITH(deeprebirth::ops::branch_conv(x, {}, no_biases, {}, 1, false),
                    Catch::Contains("weights"));
  c10::List<std::optional<at::Tensor>> two_biases;
  two_biases.push_back(std::nullopt);
  two_biases.push_back(std::nullopt);
  CHECK_THROWS_WITH(
      deeprebirth::ops::branch_conv(x, {w, at::randn({2, 3, 1, 1})}, two_biases, {1, 0}, 1, false),
      Catch::Contains("branch 1"));
}
