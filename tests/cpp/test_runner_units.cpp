// Units of deeprebirth-run: metadata parsing, preprocessing geometry, latency summary, the
// top-level operator aggregation of the profiler breakdown and forward error messages.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <opencv2/core.hpp>
#include <stdexcept>

#include "bench.h"
#include "metadata.h"
#include "model.h"
#include "preprocess.h"

namespace dr = deeprebirth::runner;
using Pair = std::array<int64_t, 2>;

TEST_CASE("parse_metadata reads every field and checks the schema", "[runner]") {
  const auto meta = dr::parse_metadata(
      R"({"schema": "deeprebirth-export", "schema_version": 1, "input_size": [96, 80],
          "resize_size": 110, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "color": "RGB",
          "class_names": ["cat", "dog"], "rules_applied": ["fold_bn"], "source_model": "g",
          "format": "torchscript", "portable": true, "unknown_key": 3})");
  CHECK((meta.input_size == Pair{96, 80}));
  CHECK(meta.resize_size == 110);
  CHECK(meta.mean[2] == Approx(0.3F));
  CHECK(meta.std[1] == Approx(0.25F));
  CHECK(meta.label(1) == "dog");
  CHECK(meta.label(7) == "class 7");
  CHECK(meta.portable);
  CHECK_THROWS_AS(dr::parse_metadata("not json"), std::invalid_argument);
  CHECK_THROWS_AS(dr::parse_metadata(R"({"schema": "other", "schema_version": 1})"),
                  std::invalid_argument);
  CHECK_THROWS_WITH(dr::parse_metadata(R"({"schema": "deeprebirth-export", "schema_version": 1,
                                           "input_size": [96, 96], "resize_size": 50})"),
                    Catch::Contains("resize_size"));
  CHECK_THROWS_WITH(dr::parse_metadata(R"({"schema": "deeprebirth-export", "schema_version": 1,
                                           "mean": "x"})"),
                    Catch::Contains("'mean'"));
}

TEST_CASE("resize and crop geometry follow torchvision's rounding", "[runner]") {
  // Independent closed forms: shorter side -> size, longer side truncated; crop offsets
  // round half to even (Python's round()).
  CHECK((dr::resized_shape(480, 640, 256) == Pair{256, 341}));
  CHECK((dr::resized_shape(640, 480, 256) == Pair{341, 256}));
  CHECK((dr::resized_shape(100, 100, 110) == Pair{110, 110}));
  CHECK((dr::center_crop_offset(110, 115, 96, 96) == Pair{7, 10}));  // 9.5 -> 10
  CHECK((dr::center_crop_offset(101, 102, 96, 96) == Pair{2, 3}));   // 2.5 -> 2
  cv::Mat image(7, 9, CV_32FC3, cv::Scalar(0.5, 0.25, 1.0));
  const auto crop = dr::center_crop(image, 5, 5);
  CHECK(crop.rows == 5);
  CHECK(crop.cols == 5);
  CHECK_THROWS_AS(dr::center_crop(image, 8, 5), std::invalid_argument);
}

TEST_CASE("normalize_to_chw subtracts the mean and divides by the std per channel", "[runner]") {
  cv::Mat image(2, 3, CV_32FC3, cv::Scalar(0.5, 0.25, 1.0));
  const auto tensor = dr::normalize_to_chw(image, {0.5F, 0.0F, 0.5F}, {0.5F, 0.25F, 0.25F});
  REQUIRE(tensor.sizes() == at::IntArrayRef({3, 2, 3}));
  CHECK(tensor[0].max().item<float>() == Approx(0.0F));
  CHECK(tensor[1].min().item<float>() == Approx(1.0F));
  CHECK(tensor[2].max().item<float>() == Approx(2.0F));
}

TEST_CASE("summarize_latencies uses nearest-rank percentiles", "[runner]") {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) {
    samples.push_back(static_cast<double>(i));
  }
  const auto summary = dr::summarize_latencies(samples, 4);
  CHECK(summary.p50_ms == 50.0);
  CHECK(summary.p90_ms == 90.0);
  CHECK(summary.p99_ms == 99.0);
  CHECK(summary.mean_ms == Approx(50.5));
  CHECK(summary.images_per_s == Approx(4000.0 / 50.5));
}

TEST_CASE("top_level_op_times counts only outermost calls per thread", "[runner]") {
  const std::vector<dr::OpInterval> intervals = {
      {"aten::conv2d", 1, 0, 10'000'000},
      {"aten::convolution", 1, 1'000'000, 9'000'000},  // nested: part of conv2d
      {"aten::max_pool2d", 1, 10'000'000, 13'000'000},
      {"aten::relu", 2, 5'000'000, 6'000'000},  // other thread: top level there
      {"deeprebirth::conv_pool", 1, 20'000'000, 24'000'000},
  };
  const auto ops = dr::top_level_op_times(intervals);
  REQUIRE(ops.size() == 4);
  CHECK(ops[0].name == "aten::conv2d");
  CHECK(ops[0].total_ms == Approx(10.0));
  CHECK(ops[0].tensor);
  CHECK(ops[1].name == "deeprebirth::conv_pool");
  CHECK(ops[1].tensor);
  CHECK(ops[2].name == "aten::max_pool2d");
  CHECK_FALSE(ops[2].tensor);
  CHECK_FALSE(dr::is_tensor_op("aten::cat"));
  CHECK(dr::is_tensor_op("aten::linear"));
}

TEST_CASE("forward_failure_reason keeps the line that says what went wrong", "[runner]") {
  CHECK(dr::forward_failure_reason("Expected 4D input\nException raised from conv2d") ==
        "Expected 4D input");
  const std::string interpreter_report = std::string(dr::kInterpreterFailure) +
                                         "\nTraceback of TorchScript (most recent call last):\n"
                                         "    _0 = torch.conv2d(input, CONSTANTS.c0)\n"
                                         "RuntimeError: expected 1 channels, but got 3\n\n";
  CHECK(dr::forward_failure_reason(interpreter_report) ==
        "RuntimeError: expected 1 channels, but got 3");
  CHECK(dr::forward_failure_reason(dr::kInterpreterFailure) == dr::kInterpreterFailure);
}
