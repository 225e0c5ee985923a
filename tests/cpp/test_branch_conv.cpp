// deeprebirth::branch_conv from C++ through the dispatcher: against ATen's conv2d -> relu -> cat,
// in both layouts, its backward against autograd through the reference, and its argument errors.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

#include "deeprebirth_ops.h"

namespace {

using deeprebirth::ops::OptionalTensorList;

struct Branches {
  std::vector<at::Tensor> weights;
  OptionalTensorList biases;
  std::vector<int64_t> paddings;
};

// Branches over `c_in` input channels: (out_channels, kernel, has_bias) each, "same" padding.
Branches make_branches(int64_t c_in, const std::vector<std::tuple<int64_t, int64_t, bool>>& spec,
                       at::ScalarType dtype = at::kFloat) {
  Branches b;
  for (const auto& [c, k, bias] : spec) {
    b.weights.push_back(at::randn({c, c_in, k, k}, at::dtype(dtype)));
    b.biases.push_back(bias ? std::optional<at::Tensor>(at::randn({c}, at::dtype(dtype)))
                            : std::nullopt);
    b.paddings.push_back(k / 2);
  }
  return b;
}

}  // namespace

TEST_CASE("branch_conv matches conv2d -> relu -> cat", "[branch_conv]") {
  at::manual_seed(0);
  const std::vector<std::vector<std::tuple<int64_t, int64_t, bool>>> specs = {
      {{64, 1, true}, {96, 1, true}, {16, 1, true}},  // inception_3a's 1x1 convs (one GEMM)
      {{5, 3, false}, {7, 1, true}, {3, 1, false}, {4, 5, true}},  // mixed runs
      {{6, 7, true}},
  };
  for (const auto& spec : specs) {
    const Branches b = make_branches(32, spec);
    for (const int64_t stride : {1, 2}) {
      for (const bool relu : {false, true}) {
        const at::Tensor x = at::randn({3, 32, 15, 13});
        const at::Tensor ref = deeprebirth::ops::branch_conv_reference(x, b.weights, b.biases,
                                                                       b.paddings, stride, relu);
        for (const at::Tensor& input : {x, x.contiguous(at::MemoryFormat::ChannelsLast)}) {
          const at::Tensor out =
              deeprebirth::ops::branch_conv(input, b.weights, b.biases, b.paddings, stride, relu);
          REQUIRE(out.sizes() == ref.sizes());
          REQUIRE(at::allclose(out, ref, 1e-4, 1e-4));
        }
      }
    }
  }
}

TEST_CASE("branch_conv gradients match autograd through the reference", "[branch_conv]") {
  at::manual_seed(1);
  Branches b = make_branches(6, {{3, 1, true}, {2, 1, false}, {4, 3, true}}, at::kDouble);
  const at::Tensor x = at::randn({2, 6, 7, 9}, at::kDouble).requires_grad_();
  std::vector<at::Tensor> inputs = {x};
  for (auto& w : b.weights) inputs.push_back(w.requires_grad_());
  for (size_t i = 0; i < b.biases.size(); ++i) {
    const std::optional<at::Tensor> bias = b.biases[i];
    if (bias.has_value()) inputs.push_back(bias->requires_grad_());
  }
  const at::Tensor grad = at::randn({2, 9, 7, 9}, at::kDouble);
  const auto ours = torch::autograd::grad(
      {deeprebirth::ops::branch_conv(x, b.weights, b.biases, b.paddings, 1, true)}, inputs, {grad});
  const auto ref = torch::autograd::grad(
      {deeprebirth::ops::branch_conv_reference(x, b.weights, b.biases, b.paddings, 1, true)},
      inputs, {grad});
  REQUIRE(ours.size() == ref.size());
  for (size_t i = 0; i < ours.size(); ++i) REQUIRE(at::allclose(ours[i], ref[i], 1e-9, 1e-9));
}

TEST_CASE("branch_conv errors name the branch", "[branch_conv]") {
  const at::Tensor x = at::randn({1, 8, 10, 10});
  Branches b = make_branches(8, {{4, 1, false}, {4, 3, false}});
  b.paddings[1] = 0;  // 8x8 output where branch 0 gives 10x10
  REQUIRE_THROWS_WITH(deeprebirth::ops::branch_conv(x, b.weights, b.biases, b.paddings, 1, false),
                      Catch::Contains("branch 1 produces a 8x8 output"));
  Branches c = make_branches(7, {{4, 1, false}});
  REQUIRE_THROWS_WITH(deeprebirth::ops::branch_conv(x, c.weights, c.biases, c.paddings, 1, false),
                      Catch::Contains("branch 0: expected weights[0] to take 8 input channels"));
}
