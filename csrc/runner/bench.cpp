// Latency / throughput / memory measurement and the LibTorch (Kineto) profiler breakdown.
#include "bench.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <map>
#include <numeric>

namespace deeprebirth::runner {

namespace {

double percentile(const std::vector<double>& sorted, double p) {
  const auto n = sorted.size();
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
  return sorted[std::clamp<size_t>(rank, 1, n) - 1];
}

// Top-level operator calls of `iterations` forwards; `wall_ms` receives their total wall time.
std::vector<OpInterval> profile_operators(const LoadedModel& model, const at::Tensor& input,
                                          int iterations, double& wall_ms) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  const ProfilerConfig config(ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities, {at::RecordScope::FUNCTION});
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) {
    model.forward(input);
  }
  wall_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const auto result = prof::disableProfiler();
  std::vector<OpInterval> intervals;
  for (const auto& event : result->events()) {
    // Operators, and the oneDNN Graph partitions that --onednn-graph runs in their place; not
    // profiler markers or user scopes.
    if (event.name().find("::") == std::string::npos &&
        event.name().rfind(kFusedPartitionPrefix, 0) != 0) {
      continue;
    }
    intervals.push_back({event.name(), event.startThreadId(), event.startNs(), event.endNs()});
  }
  return intervals;
}

void print_breakdown(const std::vector<OpTime>& ops, int iterations, double wall_ms,
                     std::ostream& out) {
  double total = 0, tensor = 0;
  for (const auto& op : ops) {
    total += op.total_ms;
    tensor += op.tensor ? op.total_ms : 0.0;
  }
  if (total <= 0) {
    out << "operator breakdown: no operator events recorded\n";
    return;
  }
  out << "operator breakdown over " << iterations << " profiled iterations (top-level ops, ms per "
      << "iteration; shares of the recorded operator time):\n";
  out << "  wall time      " << std::setw(9) << wall_ms / iterations << " ms, not recorded as "
      << "operators " << std::setw(5) << 100.0 * std::max(0.0, wall_ms - total) / wall_ms
      << " % (interpreter, prim:: ops such as --optimize's prim::mkldnn_convolution)\n";
  out << "  tensor ops     " << std::setw(9) << tensor / iterations << " ms  " << std::setw(5)
      << 100.0 * tensor / total << " %\n";
  out << "  non-tensor ops " << std::setw(9) << (total - tensor) / iterations << " ms  "
      << std::setw(5) << 100.0 * (total - tensor) / total << " %\n";
  const size_t shown = std::min<size_t>(ops.size(), 15);
  for (size_t i = 0; i < shown; ++i) {
    const auto& op = ops[i];
    out << "  " << std::left << std::setw(40) << op.name << std::right << std::setw(10)
        << op.total_ms / iterations << " ms " << std::setw(6) << 100.0 * op.total_ms / total
        << " % " << std::setw(6) << op.calls / iterations << " calls  "
        << (op.tensor ? "tensor" : "non-tensor") << "\n";
  }
}

}  // namespace

LatencySummary summarize_latencies(std::vector<double> latencies_ms, int64_t batch) {
  LatencySummary summary;
  if (latencies_ms.empty()) {
    return summary;
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  summary.p50_ms = percentile(latencies_ms, 50);
  summary.p90_ms = percentile(latencies_ms, 90);
  summary.p99_ms = percentile(latencies_ms, 99);
  summary.mean_ms = std::accumulate(latencies_ms.begin(), latencies_ms.end(), 0.0) /
                    static_cast<double>(latencies_ms.size());
  summary.images_per_s = summary.mean_ms > 0 ? 1000.0 * batch / summary.mean_ms : 0.0;
  return summary;
}

bool is_tensor_op(const std::string& name) {
  // A oneDNN Graph partition counts as a tensor op, as deeprebirth's fused conv ops do: its
  // convolution or matrix product carries the layers fused into it.
  static const char* const kTensorPatterns[] = {"conv",    "linear",      "addmm",
                                                "matmul",  "aten::mm",    "aten::bmm",
                                                "baddbmm", "prepacked::", kFusedPartitionPrefix};
  return std::any_of(std::begin(kTensorPatterns), std::end(kTensorPatterns),
                     [&](const char* pattern) { return name.find(pattern) != std::string::npos; });
}

std::vector<OpTime> top_level_op_times(std::vector<OpInterval> intervals) {
  std::sort(intervals.begin(), intervals.end(), [](const OpInterval& a, const OpInterval& b) {
    return a.thread != b.thread       ? a.thread < b.thread
           : a.start_ns != b.start_ns ? a.start_ns < b.start_ns
                                      : a.end_ns > b.end_ns;  // outer call first
  });
  std::map<std::string, OpTime> by_name;
  uint64_t current_thread = 0, current_end = 0;
  bool first = true;
  for (const auto& op : intervals) {
    if (!first && op.thread == current_thread && op.start_ns < current_end) {
      continue;  // nested in the previous top-level call
    }
    first = false;
    current_thread = op.thread;
    current_end = op.end_ns;
    auto& entry = by_name[op.name];
    entry.name = op.name;
    entry.total_ms += static_cast<double>(op.end_ns - op.start_ns) / 1e6;
    entry.calls += 1;
    entry.tensor = is_tensor_op(op.name);
  }
  std::vector<OpTime> ops;
  for (auto& [name, op] : by_name) {
    ops.push_back(op);
  }
  std::sort(ops.begin(), ops.end(),
            [](const OpTime& a, const OpTime& b) { return a.total_ms > b.total_ms; });
  return ops;
}

int64_t peak_rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stoll(line.substr(6));
    }
  }
  return -1;
}

void run_benchmark(const LoadedModel& model, const BenchOptions& options, std::ostream& out) {
  const auto& meta = model.metadata();
  at::manual_seed(0);
  const auto input =
      at::randn({options.batch, meta.channels, meta.input_size[0], meta.input_size[1]});
  for (int i = 0; i < options.warmup; ++i) {
    model.forward(input);
  }
  std::vector<double> latencies;
  latencies.reserve(static_cast<size_t>(options.iters));
  for (int i = 0; i < options.iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    model.forward(input);
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    latencies.push_back(elapsed.count());
  }
  const auto summary = summarize_latencies(latencies, options.batch);
  out << std::fixed << std::setprecision(3);
  out << "model: " << meta.source_model << " (" << model.loader() << ", "
      << (meta.portable ? "portable" : "native deeprebirth ops") << "), input " << options.batch
      << "x" << meta.channels << "x" << meta.input_size[0] << "x" << meta.input_size[1] << ", "
      << at::get_num_threads() << " threads, " << options.warmup << " warm-up + " << options.iters
      << " timed iterations\n";
  out << "latency ms: p50 " << summary.p50_ms << "  p90 " << summary.p90_ms << "  p99 "
      << summary.p99_ms << "  mean " << summary.mean_ms << "\n";
  out << "throughput: " << summary.images_per_s << " images/s\n";
  out << "peak RSS (VmHWM): " << static_cast<double>(peak_rss_kib()) / 1024.0 << " MiB\n";
  if (options.profile_iters > 0) {
    double wall_ms = 0;
    const auto intervals = profile_operators(model, input, options.profile_iters, wall_ms);
    print_breakdown(top_level_op_times(intervals), options.profile_iters, wall_ms, out);
  }
}

}  // namespace deeprebirth::runner
