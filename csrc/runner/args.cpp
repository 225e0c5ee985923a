// Command-line parsing with cxxopts; file names may contain commas (no vector splitting).
#define CXXOPTS_VECTOR_DELIMITER '\0'
#include "args.h"

#include <charconv>
#include <cxxopts.hpp>
#include <iostream>
#include <limits>

#include "errors.h"

namespace deeprebirth::runner {

namespace {

constexpr const char* kEpilog =
    "Exit codes: 0 ok, 1 internal error, 2 usage, 3 model file, 4 image, 5 batch does not fit,\n"
    "6 the model rejected the input.\n";

cxxopts::Options make_options() {
  cxxopts::Options options(
      "deeprebirth-run",
      "Classify images with, or benchmark, a model exported by `deeprebirth export`\n"
      "(TorchScript or lite file; preprocessing parameters come from its metadata).");
  options.positional_help("MODEL").custom_help("[options]");
  options.add_options()("model", "exported model file", cxxopts::value<std::string>())(
      "image", "image to classify (repeat for several)",
      cxxopts::value<std::vector<std::string>>())(
      "topk", "labels printed per image", cxxopts::value<std::string>()->default_value("5"))(
      "bench", "measure latency, throughput, peak RSS and the per-operator breakdown")(
      "batch", "bench: batch size; classify: images per forward (0 = all)",
      cxxopts::value<std::string>()->default_value("0"))(
      "threads",
      "intra-op threads (0 = LibTorch default, at most " + std::to_string(kMaxThreads) + ")",
      cxxopts::value<std::string>()->default_value("0"))(
      "warmup", "bench: untimed iterations", cxxopts::value<std::string>()->default_value("10"))(
      "iters", "bench: timed iterations", cxxopts::value<std::string>()->default_value("100"))(
      "profile-iters", "bench: iterations under the profiler (0 = skip the breakdown)",
      cxxopts::value<std::string>()->default_value("10"))(
      "optimize",
      "apply torch::jit::optimize_for_inference (MKLDNN rewrites) after loading; its "
      "prim::mkldnn_convolution nodes are invisible to the profiler breakdown")(
      "onednn-graph",
      "run TorchScript's oneDNN Graph fuser: whole runs of standard layers become fused oneDNN "
      "partitions (export with --portable so that every layer is standard; not with "
      "--optimize)")("print-logits", "print the raw logits of every image")(
      "dump-input", "write the preprocessed batch as raw float32 (N,3,H,W) to FILE",
      cxxopts::value<std::string>())("h,help", "print this help");
  options.parse_positional({"model"});
  return options;
}

// The integer value of option `name`, which must lie in [low, high]; throws RunnerError(kUsage)
// naming the option, the range and the text otherwise (a value is never truncated or wrapped).
int64_t integer_option(const cxxopts::ParseResult& result, const std::string& name, int64_t low,
                       int64_t high) {
  const auto text = result[name].as<std::string>();
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  const bool whole = stop == end && !text.empty();
  if (error == std::errc::result_out_of_range ||
      (error == std::errc() && whole && (value < low || value > high))) {
    throw RunnerError(ExitCode::kUsage, "expected --" + name + " in [" + std::to_string(low) +
                                            ", " + std::to_string(high) + "], but got " + text);
  }
  if (error != std::errc() || !whole) {
    throw RunnerError(ExitCode::kUsage,
                      "expected --" + name + " to be an integer, but got '" + text + "'");
  }
  return value;
}

void require(bool condition, const std::string& message) {
  if (!condition) {
    throw RunnerError(ExitCode::kUsage, message + " (see --help)");
  }
}

}  // namespace

RunnerOptions parse_args(int argc, const char* const argv[]) {
  auto options = make_options();
  RunnerOptions parsed;
  try {
    auto result = options.parse(argc, argv);
    if (result.count("help")) {
      std::cout << options.help() << "\n" << kEpilog;
      parsed.help = true;
      return parsed;
    }
    require(result.count("model") == 1, "expected one MODEL argument");
    require(result.unmatched().empty(),
            "unexpected argument '" +
                (result.unmatched().empty() ? std::string() : result.unmatched()[0]) + "'");
    parsed.model = result["model"].as<std::string>();
    if (result.count("image")) {
      parsed.images = result["image"].as<std::vector<std::string>>();
    }
    constexpr int64_t kLongest = std::numeric_limits<int64_t>::max();
    constexpr int64_t kInt = std::numeric_limits<int>::max();
    parsed.topk = integer_option(result, "topk", 1, kLongest);
    parsed.bench = result.count("bench") > 0;
    parsed.batch = integer_option(result, "batch", 0, kLongest);
    parsed.threads = static_cast<int>(integer_option(result, "threads", 0, kMaxThreads));
    parsed.warmup = static_cast<int>(integer_option(result, "warmup", 0, kInt));
    parsed.iters = static_cast<int>(integer_option(result, "iters", 1, kInt));
    parsed.profile_iters = static_cast<int>(integer_option(result, "profile-iters", 0, kInt));
    parsed.print_logits = result.count("print-logits") > 0;
    parsed.optimize = result.count("optimize") > 0;
    parsed.onednn_graph = result.count("onednn-graph") > 0;
    if (result.count("dump-input")) {
      parsed.dump_input = result["dump-input"].as<std::string>();
    }
  } catch (const cxxopts::exceptions::exception& error) {
    throw RunnerError(ExitCode::kUsage, std::string(error.what()) + " (see --help)");
  }
  require(parsed.bench || !parsed.images.empty(), "expected --image FILE (one or more) or --bench");
  // The MKLDNN rewrites replace the convolutions by prim::mkldnn_convolution, which the fuser
  // cannot take: together the two options would silently give neither speed-up.
  require(!(parsed.optimize && parsed.onednn_graph),
          "--optimize and --onednn-graph exclude each other");
  return parsed;
}

}  // namespace deeprebirth::runner
