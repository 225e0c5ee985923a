// The fused conv_pool CPU kernel, called through the dispatcher, against ATen's unfused
// conv2d -> relu -> pool, on shapes that take the whole-batch path and the row-band path (several
// bands per image), in both memory layouts.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "deeprebirth_ops.h"
#include "ops/common/transpose.h"
#include "ops/conv_pool/cpu/direct_band_convolution.h"
#include "ops/conv_pool/cpu/winograd_convolution.h"

namespace {

struct Case {
  std::vector<int64_t> x, w;
  int64_t stride, padding, dilation, groups;
  std::string pool;
  int64_t pool_kernel, pool_stride, pool_padding;
  bool ceil_mode, relu;
};

at::Tensor unfused(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Case& c) {
  at::Tensor y = at::conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups);
  if (c.relu) y = at::relu(y);
  if (c.pool == "max") {
    return at::max_pool2d(y, c.pool_kernel, c.pool_stride, c.pool_padding, 1, c.ceil_mode);
  }
  return at::avg_pool2d(y, c.pool_kernel, c.pool_stride, c.pool_padding, c.ceil_mode, true);
}

at::Tensor fused(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const Case& c) {
  return deeprebirth::ops::conv_pool(x, w, b, {c.stride, c.stride}, {c.padding, c.padding},
                                     {c.dilation, c.dilation}, c.groups, c.pool,
                                     {c.pool_kernel, c.pool_kernel}, {c.pool_stride, c.pool_stride},
                                     {c.pool_padding, c.pool_padding}, c.ceil_mode, c.relu);
}

}  // namespace

TEST_CASE("fused conv_pool kernel matches the unfused ATen sequence", "[conv_pool][cpu]") {
  at::manual_seed(0);
  const std::vector<Case> cases = {
      // several row bands per image (tiles of ~512 KB): GoogLeNet conv1 / conv2, ResNet-50 stem
      {{1, 3, 224, 224}, {64, 3, 7, 7}, 2, 3, 1, 1, "max", 3, 2, 0, true, true},
      {{2, 64, 56, 56}, {192, 64, 3, 3}, 1, 1, 1, 1, "max", 3, 2, 0, true, true},
      {{1, 3, 224, 224}, {64, 3, 7, 7}, 2, 3, 1, 1, "max", 3, 2, 1, false, true},
      {{1, 6, 101, 77}, {96, 3, 3, 3}, 1, 2, 2, 2, "avg", 3, 2, 1, true, true},
      {{1, 6, 101, 77}, {96, 6, 5, 5}, 1, 0, 1, 1, "avg", 2, 2, 0, false, false},
      // whole-batch path: small images
      {{3, 8, 17, 13}, {6, 4, 3, 3}, 2, 1, 1, 2, "avg", 3, 2, 1, false, false},
      {{4, 5, 9, 11}, {7, 5, 1, 1}, 3, 0, 1, 1, "max", 2, 1, 1, true, false},
      {{0, 4, 9, 9}, {4, 4, 1, 1}, 1, 0, 1, 1, "max", 2, 2, 0, false, true},
  };
  for (const auto& c : cases) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.w[1] * c.w[2] * c.w[3]));
    for (const auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
      const at::Tensor x = at::randn(c.x).contiguous(format);
      const at::Tensor w = (at::randn(c.w) * scale).contiguous(format);
      const at::Tensor b = at::randn({c.w[0]});
      const at::Tensor y = fused(x, w, b, c);
      const at::Tensor expected = unfused(x, w, b, c);
      CAPTURE(c.x, c.w, c.pool, static_cast<int>(format));
      REQUIRE(y.sizes() == expected.sizes());
      CHECK(at::allclose(y, expected, /*rtol=*/1e-4, /*atol=*/1e-5));
      const bool channels_last = format == at::MemoryFormat::ChannelsLast && !x.is_contiguous();
      CHECK(y.is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::Contiguous));
    }
  }
}

TEST_CASE("conv_pool float64 agrees tightly", "[conv_pool][cpu]") {
  at::manual_seed(1);
  const Case c{{2, 16, 64, 64}, {128, 16, 3, 3}, 1, 1, 1, 1, "max", 3, 2, 1, true, true};
  const at::Tensor x = at::randn(c.x, at::kDouble);
  const at::Tensor w = at::randn(c.w, at::kDouble) / 12.0;
  const at::Tensor b = at::randn({c.w[0]}, at::kDouble);
  CHECK(at::allclose(fused(x, w, b, c), unfused(x, w, b, c), 1e-10, 1e-12));
}

TEST_CASE("conv_pool_backward matches autograd of the unfused sequence", "[conv_pool][autograd]") {
  at::manual_seed(2);
  // 64 x 100 doubles per convolution row: the CPU backward recomputes it in several bands
  const Case c{{2, 3, 120, 100}, {64, 3, 5, 5}, 1, 2, 1, 1, "max", 3, 2, 1, true, true};
  const at::Tensor x = at::randn(c.x, at::kDouble).requires_grad_();
  const at::Tensor w = at::randn(c.w, at::kDouble).requires_grad_();
  const at::Tensor b = at::randn({c.w[0]}, at::kDouble).requires_grad_();
  const at::Tensor grad = at::randn_like(unfused(x, w, b, c));
  const auto got = torch::autograd::grad({fused(x, w, b, c)}, {x, w, b}, {grad});
  const auto want = torch::autograd::grad({unfused(x, w, b, c)}, {x, w, b}, {grad});
  for (size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(at::allclose(got[i], want[i], 1e-9, 1e-10));
  }
}

TEST_CASE("Winograd F(2x2, 3x3) band convolution matches at::conv2d", "[conv_pool][cpu]") {
  using deeprebirth::ops::make_conv_pool_args;
  using deeprebirth::ops::WinogradConvolution;
  at::manual_seed(3);
  struct Shape {
    int64_t c_in, c_out, h, w, padding, row0, row1;
    bool channels_last;
  };
  // rows at both edges (vertical padding) and inside, odd first rows and row counts (partial 2x2
  // blocks), odd widths, one-row outputs, several chunks (GoogLeNet conv2), chunks of part of a
  // patch row (many input channels, a wide image), both image layouts
  const std::vector<Shape> shapes{
      {8, 16, 3, 3, 0, 0, 1, false},     {9, 17, 7, 10, 1, 0, 7, true},
      {64, 192, 56, 56, 1, 0, 56, true}, {64, 192, 56, 56, 1, 23, 30, false},
      {16, 32, 12, 5, 2, 3, 14, false},  {12, 24, 1, 6, 1, 0, 1, true},
      {256, 32, 6, 70, 1, 1, 6, true}};
  const std::vector<int64_t> one{1, 1}, two{2, 2}, zero{0, 0};
  for (const Shape& s : shapes) {
    const at::Tensor x = at::randn({1, s.c_in, s.h, s.w});
    const at::Tensor image =
        (s.channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x)[0];
    const at::Tensor w = at::randn({s.c_out, s.c_in, 3, 3}) / std::sqrt(9.0 * s.c_in);
    const std::vector<int64_t> padding{s.padding, s.padding};
    const auto args = make_conv_pool_args(one, padding, one, 1, "max", two, two, zero, false, true);
    const at::Tensor want = at::conv2d(x, w, /*bias=*/{}, 1, s.padding)[0];
    at::Tensor got = at::full({s.row1 - s.row0, want.size(2), s.c_out}, NAN);
    std::vector<float> scratch;
    WinogradConvolution(w, args, want.size(2))(image, s.row0, s.row1, got.data_ptr<float>(),
                                               scratch);
    CAPTURE(s.c_in, s.c_out, s.h, s.w, s.padding, s.row0, s.row1, s.channels_last);
    CHECK(at::allclose(got.permute({2, 0, 1}), want.slice(1, s.row0, s.row1), 1e-4, 1e-5));
  }
}

TEST_CASE("Winograd applies to float32 3x3 stride-1 layers only", "[conv_pool][cpu]") {
  using deeprebirth::ops::make_conv_pool_args;
  using deeprebirth::ops::WinogradConvolution;
  // ConvPoolArgs views its int lists: keep them alive for the whole test
  const std::vector<int64_t> one{1, 1}, two{2, 2}, zero{0, 0}, three{3, 3};
  const auto args = [&](const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation,
                        int64_t groups) {
    return make_conv_pool_args(stride, one, dilation, groups, "max", three, two, zero, false, true);
  };
  const at::Tensor w = at::randn({192, 64, 3, 3});
  CHECK(WinogradConvolution::applies(w, args(one, one, 1)));
  CHECK_FALSE(WinogradConvolution::applies(w.to(at::kDouble), args(one, one, 1)));
  CHECK_FALSE(WinogradConvolution::applies(w, args(two, one, 1)));
  CHECK_FALSE(WinogradConvolution::applies(w, args(one, two, 1)));
  CHECK_FALSE(WinogradConvolution::applies(w, args(one, one, 2)));
  CHECK_FALSE(WinogradConvolution::applies(at::randn({192, 64, 5, 5}), args(one, one, 1)));
  CHECK_FALSE(WinogradConvolution::applies(at::randn({8, 4, 3, 3}), args(one, one, 1)));
}

TEST_CASE("Winograd passes hold at most a third of a large transformed weight",
          "[conv_pool][cpu]") {
  using deeprebirth::ops::WinogradConvolution;
  const at::Tensor conv2 = at::randn({192, 64, 3, 3});  // transformed: 16 * 64 * 192 floats
  const int64_t conv2_output = 192 * 56 * 56 * 4;       // one image's pre-pool tensor
  CHECK(WinogradConvolution::channels_per_pass(conv2, conv2_output) == 64);
  CHECK(WinogradConvolution::channels_per_pass(conv2, 32 * conv2_output) == 192);     // batch 32
  CHECK(WinogradConvolution::channels_per_pass(at::randn({64, 32, 3, 3}), 0) == 64);  // 128 KiB
  // over 256 KiB: equal groups, whole 16-channel blocks
  CHECK(WinogradConvolution::channels_per_pass(at::randn({192, 96, 3, 3}), 0) == 48);
  CHECK(WinogradConvolution::channels_per_pass(at::randn({20, 256, 3, 3}), 0) == 16);
}

TEST_CASE("Direct band convolution of first layers matches at::conv2d", "[conv_pool][cpu]") {
  using deeprebirth::ops::DirectBandConvolution;
  using deeprebirth::ops::make_conv_pool_args;
  at::manual_seed(5);
  struct Shape {
    int64_t c_in, c_out, h, w, kernel, stride, padding, row0, row1;
  };
  // GoogLeNet conv1 rows inside and at both edges (vertical padding), a partial last block of
  // output channels, a channels-last image, widths that leave every tile size a remainder
  const std::vector<Shape> shapes{
      {3, 64, 224, 224, 7, 2, 3, 0, 9},     {3, 64, 224, 224, 7, 2, 3, 50, 59},
      {3, 64, 224, 224, 7, 2, 3, 105, 112}, {1, 17, 13, 29, 5, 1, 2, 0, 13},
      {4, 40, 20, 11, 3, 3, 1, 2, 5},       {2, 5, 9, 9, 1, 1, 0, 4, 5}};
  const std::vector<int64_t> dilation{1, 1}, zero{0, 0}, two{2, 2};
  for (const Shape& s : shapes) {
    const at::Tensor x = at::randn({s.c_in, s.h, s.w});
    const at::Tensor image =
        s.c_in == 2 ? x.unsqueeze(0).contiguous(at::MemoryFormat::ChannelsLast)[0] : x;
    const at::Tensor w = at::randn({s.c_out, s.c_in, s.kernel, s.kernel});
    const std::vector<int64_t> stride{s.stride, s.stride}, padding{s.padding, s.padding};
    const auto args =
        make_conv_pool_args(stride, padding, dilation, 1, "max", two, two, zero, false, true);
    const at::Tensor want = at::conv2d(x.unsqueeze(0), w, /*bias=*/{}, stride, padding)[0];
    const int64_t conv_w = want.size(2);
    at::Tensor got = at::full({s.row1 - s.row0, conv_w, s.c_out}, NAN);
    std::vector<float> scratch;
    DirectBandConvolution(w, args, conv_w)(image, s.row0, s.row1, got.data_ptr<float>(), scratch);
    CAPTURE(s.c_in, s.c_out, s.h, s.w, s.kernel, s.stride, s.padding, s.row0, s.row1);
    CHECK(at::allclose(got.permute({2, 0, 1}), want.slice(1, s.row0, s.row1), 1e-4, 1e-4));
  }
}

TEST_CASE("Direct band convolution applies to float32 first layers only", "[conv_pool][cpu]") {
  using deeprebirth::ops::DirectBandConvolution;
  using deeprebirth::ops::make_conv_pool_args;
  const std::vector<int64_t> one{1, 1}, two{2, 2}, three{3, 3}, zero{0, 0};
  const auto args = [&](const std::vector<int64_t>& dilation, int64_t groups) {
    return make_conv_pool_args(two, three, dilation, groups, "max", three, two, zero, true, true);
  };
  const at::Tensor w = at::randn({64, 3, 7, 7});
  CHECK(DirectBandConvolution::applies(w, args(one, 1)));
  CHECK(DirectBandConvolution::applies(at::randn({16, 4, 3, 3}), args(one, 1)));
  CHECK_FALSE(DirectBandConvolution::applies(at::randn({16, 5, 3, 3}), args(one, 1)));
  CHECK_FALSE(DirectBandConvolution::applies(w.to(at::kDouble), args(one, 1)));
  CHECK_FALSE(DirectBandConvolution::applies(w.to(at::kBFloat16), args(one, 1)));
  CHECK_FALSE(DirectBandConvolution::applies(w, args(two, 1)));
  CHECK_FALSE(DirectBandConvolution::applies(at::randn({64, 1, 7, 7}), args(one, 3)));
}

TEST_CASE("transpose_floats matches at::Tensor::t over block-size edges", "[conv_pool][cpu]") {
  // under 16 (element by element), multiples of 16 and overlapping last blocks; row steps wider
  // than a row on both sides
  const std::vector<std::pair<int64_t, int64_t>> shapes{
      {3, 5}, {16, 16}, {17, 40}, {64, 56}, {15, 70}};
  for (const auto& [rows, cols] : shapes) {
    const at::Tensor src = at::randn({rows, cols + 3}).narrow(1, 0, cols);
    at::Tensor dst = at::full({cols, rows + 2}, -1.0);
    deeprebirth::ops::transpose_floats(src.const_data_ptr<float>(), src.stride(0), rows, cols,
                                       dst.mutable_data_ptr<float>(), dst.stride(0));
    CHECK(at::equal(dst.narrow(1, 0, rows), src.t()));
    CHECK(dst.narrow(1, rows, 2).eq(-1.0).all().item<bool>());  // nothing written past a row
  }
}
