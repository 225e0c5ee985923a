// deeprebirth::direct_conv and small_conv2d from C++ through the dispatcher: against ATen's
// conv2d (+ relu) over a seeded grid of small layers, and the argument errors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <catch2/catch.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "deeprebirth_ops.h"
#include "ops/direct_conv/cpu/onednn_conv_primitive.h"
#include "ops/direct_conv/cpu/onednn_packed_conv.h"

using deeprebirth::ops::direct_conv;
using deeprebirth::ops::direct_conv_pack;
using deeprebirth::ops::small_conv2d;

TEST_CASE("direct_conv matches conv2d -> relu", "[direct_conv]") {
  at::manual_seed(0);
  std::mt19937 rng(3);
  auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int i = 0; i < 40; ++i) {
    const int64_t kh = pick(1, 7), kw = pick(1, 7), sh = pick(1, 3), sw = pick(1, 3);
    const int64_t ph = pick(0, kh / 2), pw = pick(0, kw / 2);
    const int64_t h = pick(kh, 24), w = pick(kw, 24), c_in = pick(1, 33), c_out = pick(1, 40);
    const at::Tensor x = at::randn({pick(0, 2), c_in, h, w});
    const at::Tensor weight = at::randn({c_out, c_in, kh, kw}) / std::sqrt(c_in * kh * kw);
    const std::optional<at::Tensor> bias =
        i % 3 == 0 ? std::nullopt : std::optional<at::Tensor>(at::randn({c_out}));
    const bool relu = i % 2 == 0;
    at::Tensor expected = at::conv2d(x, weight, bias, {sh, sw}, {ph, pw});
    if (relu) expected = at::relu(expected);
    const at::Tensor out =
        direct_conv(x, direct_conv_pack(weight), bias, c_out, {sh, sw}, {ph, pw}, relu);
    INFO("kernel " << kh << "x" << kw << " stride " << sh << "," << sw << " channels " << c_in
                   << "->" << c_out);
    REQUIRE(out.sizes() == expected.sizes());
    CHECK(at::allclose(out, expected, 1e-4, 1e-5));
    const at::Tensor chosen = small_conv2d(x, weight, direct_conv_pack(weight), bias, {sh, sw},
                                           {ph, pw}, {1, 1}, 1, relu, int64_t{1} << 22, 64);
    CHECK(at::allclose(chosen, expected, 1e-4, 1e-5));
  }
}

TEST_CASE("direct_conv errors name the argument", "[direct_conv][errors]") {
  const at::Tensor x = at::randn({1, 3, 5, 5});
  const at::Tensor packed = direct_conv_pack(at::randn({4, 3, 3, 3}));
  auto message = [](auto&& call) {
    try {
      call();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  CHECK_THAT(message([&] {
               direct_conv(x, packed, std::nullopt, 17, {1, 1}, {0, 0}, false);
             }),
             Catch::Contains("expected out_channels in (0, 16]"));
  CHECK_THAT(message([&] {
               direct_conv(at::randn({1, 2, 5, 5}), packed, std::nullopt, 4, {1, 1}, {0, 0}, false);
             }),
             Catch::Contains("expected x to have packed_w.size(1) = 3 channels"));
  CHECK_THAT(message([&] {
               direct_conv(x, packed, std::nullopt, 4, {0, 1}, {0, 0}, false);
             }),
             Catch::Contains("stride"));
}

TEST_CASE("direct_conv_cat writes each branch into its channels", "[direct_conv]") {
  at::manual_seed(1);
  const std::vector<at::Tensor> xs = {at::randn({2, 6, 8, 8}), at::randn({2, 3, 8, 8})};
  const std::vector<at::Tensor> ws = {at::randn({20, 6, 3, 3}) / 7, at::randn({5, 3, 5, 5}) / 8};
  c10::List<std::optional<at::Tensor>> bs;
  bs.push_back(at::randn({20}));
  bs.push_back(std::nullopt);
  const std::vector<at::Tensor> packed = {direct_conv_pack(ws[0]), direct_conv_pack(ws[1])};
  const at::Tensor expected = at::cat({at::relu(at::conv2d(xs[0], ws[0], bs.get(0), 1, 1)),
                                       at::relu(at::conv2d(xs[1], ws[1], std::nullopt, 1, 2))},
                                      1);
  const at::Tensor out =
      deeprebirth::ops::direct_conv_cat(xs, packed, bs, {20, 5}, {1, 1, 1, 1}, {1, 1, 2, 2}, true);
  CHECK(at::allclose(out, expected, 1e-4, 1e-5));
  const at::Tensor chosen = deeprebirth::ops::small_conv2d_cat(
      xs, ws, packed, bs, {1, 1, 1, 1}, {1, 1, 2, 2}, true, int64_t{1} << 22, 64);
  CHECK(at::allclose(chosen, expected, 1e-4, 1e-5));
}

TEST_CASE("small_conv2d packs a frozen weight once per input shape, version and thread count",
          "[direct_conv][onednn]") {
  if (!at::hasMKLDNN()) {
    WARN("oneDNN is not in this torch build: nothing to pack");
    return;
  }
  using deeprebirth::ops::clear_onednn_packed_weights;
  using deeprebirth::ops::onednn_packed_weight_count;
  at::manual_seed(1);
  clear_onednn_packed_weights();
  // Large enough that the direct kernel does not pay: small_conv2d hands it to oneDNN.
  const at::Tensor x = at::randn({2, 32, 20, 20});
  at::Tensor weight = at::randn({48, 32, 3, 3}) / 17.0;
  const at::Tensor bias = at::randn({48});
  const auto run = [&](const at::Tensor& input, const at::Tensor& w) {
    return small_conv2d(input, w, direct_conv_pack(w), bias, {1, 1}, {1, 1}, {1, 1}, 1, true, 0, 0);
  };
  const auto expected = [&](const at::Tensor& input, const at::Tensor& w) {
    return at::relu(at::conv2d(input, w, bias, {1, 1}, {1, 1}));
  };
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 1);  // the second call reused the packed copy
  const at::Tensor x1 = at::randn({1, 32, 20, 20}).contiguous(at::MemoryFormat::ChannelsLast);
  CHECK(at::allclose(run(x1, weight), expected(x1, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 2);  // one copy per input shape
  weight.mul_(-1.0);  // an in-place update moves the version counter: a new copy replaces it
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 2);
  weight = at::randn({48, 32, 3, 3}) / 17.0;  // the old weight is freed, its copies go
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 1);
  // A trainable weight keeps ATen's convolution (it may be written through .data unseen).
  const at::Tensor trainable = weight.clone().set_requires_grad(true);
  {
    c10::AutoGradMode no_grad(false);
    CHECK(at::allclose(run(x, trainable), expected(x, weight), 1e-4, 1e-5));
  }
  CHECK(onednn_packed_weight_count() == 1);
  // oneDNN splits a primitive's work for the threads there are when it is made and keeps using
  // that many: another thread count packs anew, and the first finds its copy again
  const int threads = at::get_num_threads();
  at::set_num_threads(threads + 1);
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 2);
  at::set_num_threads(threads);
  CHECK(at::allclose(run(x, weight), expected(x, weight), 1e-4, 1e-5));
  CHECK(onednn_packed_weight_count() == 2);
  clear_onednn_packed_weights();
  CHECK(onednn_packed_weight_count() == 0);
}

TEST_CASE("small_conv2d_add_ writes relu(conv + residual) over the residual",
          "[direct_conv][onednn]") {
  using deeprebirth::ops::clear_onednn_packed_weights;
  using deeprebirth::ops::onednn_packed_weight_count;
  using deeprebirth::ops::small_conv2d_add_;
  at::manual_seed(2);
  clear_onednn_packed_weights();
  const at::Tensor x = at::randn({2, 32, 12, 12}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = at::randn({48, 32, 3, 3}) / 17.0;
  const at::Tensor bias = at::randn({48});
  const at::Tensor shortcut = at::randn({2, 48, 12, 12});
  for (const bool relu : {false, true}) {
    for (const auto layout : {at::MemoryFormat::ChannelsLast, at::MemoryFormat::Contiguous}) {
      for (const bool trainable : {false, true}) {
        CAPTURE(relu, layout == at::MemoryFormat::ChannelsLast, trainable);
        const at::Tensor w = trainable ? weight.clone().set_requires_grad(true) : weight;
        at::Tensor residual = shortcut.contiguous(layout).clone(layout);
        at::Tensor expected = at::conv2d(x, weight, bias, {1, 1}, {1, 1}) + shortcut;
        expected = relu ? at::relu(expected) : expected;
        c10::AutoGradMode no_grad(false);
        const at::Tensor& out = small_conv2d_add_(residual, x, w, direct_conv_pack(w), bias, {1, 1},
                                                  {1, 1}, {1, 1}, 1, relu, 0, 0);
        CHECK(out.is_same(residual));  // written in place
        CHECK(at::allclose(residual, expected, 1e-4, 1e-5));
      }
    }
  }
  // Frozen weights ran oneDNN (trainable ones ATen's conv2d): one input shape, so one packed copy
  // ATen's oneDNN path uses for every epilogue (the NCHW residual's; every call's without own
  // primitives), and an own primitive per epilogue (add, add + ReLU) for the channels_last one.
  const size_t own = deeprebirth::ops::onednn_primitives_built() ? 2 : 0;
  CHECK(onednn_packed_weight_count() == (at::hasMKLDNN() ? 1 + own : 0u));
  clear_onednn_packed_weights();
  // A residual that wants a gradient takes the differentiable path: d(sum)/d(residual) = 1.
  const at::Tensor leaf = shortcut.clone().set_requires_grad(true);
  at::Tensor residual = leaf.clone();
  small_conv2d_add_(residual, x, weight, direct_conv_pack(weight), bias, {1, 1}, {1, 1}, {1, 1}, 1,
                    false, 0, 0);
  CHECK(at::allclose(residual, at::conv2d(x, weight, bias, {1, 1}, {1, 1}) + shortcut, 1e-4, 1e-5));
  residual.sum().backward();
  CHECK(at::equal(leaf.grad(), at::ones_like(leaf)));
  clear_onednn_packed_weights();
}
