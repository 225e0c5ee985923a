// Command line of deeprebirth-run (parsed with cxxopts).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deeprebirth::runner {

// The most intra-op threads --threads may ask for.
inline constexpr int64_t kMaxThreads = 1024;

struct RunnerOptions {
  std::string model;                // exported TorchScript / lite file
  std::vector<std::string> images;  // classify these (in order)
  int64_t topk = 5;
  bool bench = false;
  int64_t batch = 0;  // classify: images per forward (0 = all); bench: batch size (0 = 1)
  int threads = 0;    // intra-op threads (0 = LibTorch's default)
  int warmup = 10;
  int iters = 100;
  int profile_iters = 10;     // extra iterations run under the profiler (0 = no breakdown)
  bool optimize = false;      // torch::jit::optimize_for_inference after loading (--optimize)
  bool onednn_graph = false;  // TorchScript's oneDNN Graph fuser on (--onednn-graph)
  bool print_logits = false;  // print raw logits, one line per image
  std::string dump_input;     // write the preprocessed batch (float32, N*3*H*W) to this file
  bool help = false;          // --help was given (usage already printed)
};

// Parses argv. Throws RunnerError(kUsage) naming the bad option (integers outside their range
// included: --topk >= 1, --batch >= 0, --threads in [0, kMaxThreads], --warmup >= 0, --iters >= 1,
// --profile-iters >= 0, each at most what its field holds) and --optimize with --onednn-graph;
// prints usage on --help.
RunnerOptions parse_args(int argc, const char* const argv[]);

}  // namespace deeprebirth::runner
