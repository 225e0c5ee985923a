// Units of deeprebirth-run: metadata parsing, preprocessing geometry, latency summary, the
// top-level operator aggregation of the profiler breakdown, forward error messages, the
// command line's integer ranges and the image size limits.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <stdexcept>
#include <vector>

#include "args.h"
#include "bench.h"
#include "errors.h"
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
  CHECK(dr::is_tensor_op("LlgaPartition_7"));  // a --onednn-graph partition: fused convolutions
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

namespace {

std::string record_with(const std::string& fields) {
  return R"({"schema": "deeprebirth-export", "schema_version": 1, )" + fields + "}";
}

dr::RunnerOptions parse(std::vector<std::string> args) {
  args.insert(args.begin(), {"deeprebirth-run", "model.ts"});
  std::vector<const char*> argv;
  for (const auto& arg : args) {
    argv.push_back(arg.c_str());
  }
  return dr::parse_args(static_cast<int>(argv.size()), argv.data());
}

// The exit code and message of parse(args), which must throw a RunnerError.
std::pair<dr::ExitCode, std::string> parse_error(const std::vector<std::string>& args) {
  try {
    parse(args);
  } catch (const dr::RunnerError& error) {
    return {error.code(), error.what()};
  }
  FAIL("parse_args accepted the arguments");
  return {};
}

// A fresh, empty folder for files a test writes.
std::filesystem::path scratch_folder(const std::string& name) {
  const auto folder = std::filesystem::temp_directory_path() / ("deeprebirth_runner_" + name);
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  return folder;
}

void write_bytes(const std::filesystem::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

// The message of read_image_rgb(path), which must throw a RunnerError(kImage).
std::string image_error(const std::filesystem::path& path) {
  try {
    dr::read_image_rgb(path.string());
  } catch (const dr::RunnerError& error) {
    CHECK(error.code() == dr::ExitCode::kImage);
    return error.what();
  }
  FAIL("read_image_rgb accepted " << path);
  return {};
}

}  // namespace

TEST_CASE("parse_metadata bounds the sizes to integers in [1, kMaxImageSide]", "[runner]") {
  const auto largest =
      dr::parse_metadata(record_with(R"("input_size": [16384, 16384], "resize_size": 16384)"));
  CHECK((largest.input_size == Pair{16384, 16384}));
  CHECK(largest.resize_size == dr::kMaxImageSide);
  for (const auto* fields :
       {R"("input_size": [1000000000, 96])", R"("input_size": [96, 0])",
        R"("input_size": [96, -5])", R"("input_size": [96, 96.5])", R"("input_size": [96, 1e30])",
        R"("input_size": [96])", R"("input_size": [96, 18446744073709551615])"}) {
    CHECK_THROWS_WITH(dr::parse_metadata(record_with(fields)), Catch::Contains("input_size"));
  }
  for (const auto* fields :
       {R"("resize_size": 8589934592)", R"("resize_size": 16385)", R"("resize_size": 300.0)",
        R"("resize_size": 18446744073709551615)", R"("resize_size": "big")"}) {
    CHECK_THROWS_WITH(dr::parse_metadata(record_with(fields)),
                      Catch::Contains("resize_size") && Catch::Contains("16384"));
  }
  CHECK_THROWS_WITH(dr::parse_metadata(record_with(R"("std": [0.2, 1e300, 0.2])")),
                    Catch::Contains("finite"));
}

TEST_CASE("parse_args refuses integers outside their range instead of truncating", "[runner]") {
  const auto options = parse({"--bench", "--iters", "2147483647", "--threads", "1024", "--batch",
                              "9999999999", "--warmup", "0"});
  CHECK(options.iters == 2147483647);
  CHECK(options.threads == 1024);
  CHECK(options.batch == 9999999999);
  CHECK(options.warmup == 0);
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--bench", "--iters", "9999999999"}, "--iters in [1, 2147483647], but got 9999999999"},
      {{"--bench", "--iters", "0"}, "--iters in [1, 2147483647], but got 0"},
      {{"--bench", "--threads", "4294967297"}, "--threads in [0, 1024], but got 4294967297"},
      {{"--bench", "--threads", "-1"}, "--threads in [0, 1024], but got -1"},
      {{"--bench", "--warmup", "99999999999999999999"}, "--warmup in [0, 2147483647]"},
      {{"--bench", "--profile-iters", "-2"}, "--profile-iters in [0, 2147483647]"},
      {{"--bench", "--batch", "-1"}, "--batch in [0, 9223372036854775807]"},
      {{"--bench", "--topk", "0"}, "--topk in [1, 9223372036854775807]"},
      {{"--bench", "--iters", "12abc"}, "expected --iters to be an integer, but got '12abc'"},
      {{"--bench", "--iters", ""}, "expected --iters to be an integer, but got ''"},
  };
  for (const auto& [args, message] : cases) {
    const auto [code, what] = parse_error(args);
    CHECK(code == dr::ExitCode::kUsage);
    CHECK_THAT(what, Catch::Contains(message));
  }
}

TEST_CASE("image_header_size reads PNG and JPEG headers as the decoder sees them", "[runner]") {
  const auto folder = scratch_folder("headers");
  const cv::Mat pixels(37, 53, CV_8UC3, cv::Scalar(10, 200, 30));
  for (const auto* name : {"a.png", "a.jpg", "a.bmp"}) {
    REQUIRE(cv::imwrite((folder / name).string(), pixels));
  }
  const auto decoded = cv::imread((folder / "a.jpg").string(), cv::IMREAD_UNCHANGED);
  const Pair expected{decoded.rows, decoded.cols};
  CHECK((dr::image_header_size((folder / "a.png").string()) == expected));
  CHECK((dr::image_header_size((folder / "a.jpg").string()) == expected));
  CHECK_FALSE(dr::image_header_size((folder / "a.bmp").string()).has_value());
  CHECK_FALSE(dr::image_header_size((folder / "missing.png").string()).has_value());
  std::filesystem::remove_all(folder);
}

TEST_CASE("read_image_rgb refuses images over kMaxImagePixels before decoding", "[runner]") {
  const auto folder = scratch_folder("bombs");
  // Headers only: had the decoder run, the message would be "not a readable image".
  write_bytes(folder / "huge.png",
              {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D',
               'R',  0,   1,   0,   0,    0,    0,    64,   1, 8, 2, 0,  0,   0});
  write_bytes(folder / "huge.jpg", {0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0,  // APP0, skipped
                                    0xFF, 0xC0, 0, 11, 8, 0xFF, 0xFF, 0xFF, 0xFF, 3});
  CHECK_THAT(image_error(folder / "huge.png"),
             Catch::Contains("16385x65536 pixels, more than the limit of 268435456 pixels"));
  CHECK_THAT(image_error(folder / "huge.jpg"), Catch::Contains("65535x65535 pixels"));
  std::filesystem::remove_all(folder);
}

TEST_CASE("resize_shorter_side refuses a longer side above kMaxImageSide", "[runner]") {
  const cv::Mat strip(1, 20000, CV_32FC3, cv::Scalar(0.5, 0.5, 0.5));
  CHECK_THROWS_WITH(dr::resize_shorter_side(strip, 256),
                    Catch::Contains("gives 256x5120000, more than the limit of 16384"));
  const cv::Mat tall(64, 1, CV_32FC3, cv::Scalar(0.5, 0.5, 0.5));  // 64:1 at 256 -> 16384
  const auto resized = dr::resize_shorter_side(tall, 256);
  CHECK(resized.rows == 16384);
  CHECK(resized.cols == 256);
}
