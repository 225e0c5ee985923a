// Command-line parsing with cxxopts; file names may contain commas (no vector splitting).
#define CXXOPTS_VECTOR_DELIMITER '\0'
#include "args.h"

#include <cxxopts.hpp>
#include <iostream>

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
      "threads", "intra-op threads (0 = LibTorch default)",
      cxxopts::value<std::string>()->default_value("0"))(
      "warmup", "bench: untimed iterations", cxxopts::value<std::string>()->default_value("10"))(
      "iters", "bench: timed iterations", cxxopts::value<std::string>()->default_value("100"))(
      "profile-iters", "bench: iterations under the profiler (0 = skip the breakdown)",
      cxxopts::value<std::string>()->default_value("10"))(
      "optimize",
      "apply torch::jit::optimize_for_inference (MKLDNN rewrites) after loading; its "
      "prim::mkldnn_convolution nodes are invisible to the profiler breakdown")(
      "print-logits", "print the raw logits of every image")(
      "dump-input", "write the preprocessed batch as raw float32 (N,3,H,W) to FILE",
      cxxopts::value<std::string>())("h,help", "print this help");
  options.parse_positional({"model"});
  return options;
}

// The integer value of option `name`; throws RunnerError(kUsage) naming the option otherwise.
int64_t integer_option(const cxxopts::ParseResult& result, const std::string& name) {
  const auto text = result[name].as<std::string>();
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) {
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
    parsed.topk = integer_option(result, "topk");
    parsed.bench = result.count("bench") > 0;
    parsed.batch = integer_option(result, "batch");
    parsed.threads = static_cast<int>(integer_option(result, "threads"));
    parsed.warmup = static_cast<int>(integer_option(result, "warmup"));
    parsed.iters = static_cast<int>(integer_option(result, "iters"));
    parsed.profile_iters = static_cast<int>(integer_option(result, "profile-iters"));
    parsed.print_logits = result.count("print-logits") > 0;
    parsed.optimize = result.count("optimize") > 0;
    if (result.count("dump-input")) {
      parsed.dump_input = result["dump-input"].as<std::string>();
    }
  } catch (const cxxopts::exceptions::exception& error) {
    throw RunnerError(ExitCode::kUsage, std::string(error.what()) + " (see --help)");
  }
  require(parsed.bench || !parsed.images.empty(), "expected --image FILE (one or more) or --bench");
  require(parsed.topk >= 1, "expected --topk >= 1, but got " + std::to_string(parsed.topk));
  require(parsed.batch >= 0, "expected --batch >= 0, but got " + std::to_string(parsed.batch));
  require(parsed.threads >= 0,
          "expected --threads >= 0, but got " + std::to_string(parsed.threads));
  require(parsed.warmup >= 0 && parsed.iters >= 1 && parsed.profile_iters >= 0,
          "expected --warmup >= 0, --iters >= 1 and --profile-iters >= 0");
  return parsed;
}

}  // namespace deeprebirth::runner
