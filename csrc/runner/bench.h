// --bench: latency percentiles, throughput, peak RSS and the per-operator time breakdown
// (tensor vs non-tensor operators, the DeepRebirth paper's Table 1 view).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "model.h"

namespace deeprebirth::runner {

// How the profiler names a oneDNN Graph partition (LlgaPartition_<n>) of a --onednn-graph run.
inline constexpr const char* kFusedPartitionPrefix = "LlgaPartition";

struct LatencySummary {
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, mean_ms = 0;
  double images_per_s = 0;
};

// Nearest-rank percentiles of per-iteration latencies (ms); throughput = batch / mean latency.
LatencySummary summarize_latencies(std::vector<double> latencies_ms, int64_t batch);

// One profiled operator call: name, thread and [start, end) in nanoseconds.
struct OpInterval {
  std::string name;
  uint64_t thread = 0;
  uint64_t start_ns = 0, end_ns = 0;
};

struct OpTime {
  std::string name;
  double total_ms = 0;
  int64_t calls = 0;
  bool tensor = false;
};

// Tensor operators do the arithmetic of the network (convolutions, matrix products,
// deeprebirth's fused conv ops and oneDNN Graph partitions); everything else (pool, ReLU, LRN,
// cat, BN, copies) is non-tensor.
bool is_tensor_op(const std::string& name);

// Total time per operator name over the top-level calls only (calls nested inside another call
// on the same thread are part of their caller), sorted by decreasing time.
std::vector<OpTime> top_level_op_times(std::vector<OpInterval> intervals);

// Peak resident set size of this process (VmHWM of /proc/self/status), in KiB; -1 if unknown.
int64_t peak_rss_kib();

struct BenchOptions {
  int64_t batch = 1;
  int warmup = 10;
  int iters = 100;
  int profile_iters = 10;
};

// Runs the benchmark on a random (seeded) input and prints the report to `out`.
void run_benchmark(const LoadedModel& model, const BenchOptions& options, std::ostream& out);

}  // namespace deeprebirth::runner
