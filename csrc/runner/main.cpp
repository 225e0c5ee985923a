// deeprebirth-run: classify images with an exported model, or benchmark it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <new>

#include "args.h"
#include "bench.h"
#include "errors.h"
#include "model.h"
#include "preprocess.h"

namespace dr = deeprebirth::runner;

namespace {

// MemAvailable of /proc/meminfo in bytes; -1 if unknown.
int64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") {
      return kib * 1024;
    }
  }
  return -1;
}

// Precondition of every forward: the input batch alone must fit in the available memory.
void check_batch_fits(int64_t batch, const dr::ExportMetadata& meta) {
  const double bytes = static_cast<double>(batch) * static_cast<double>(meta.channels) *
                       static_cast<double>(meta.input_size[0]) *
                       static_cast<double>(meta.input_size[1]) * sizeof(float);
  const auto available = available_memory_bytes();
  if (available > 0 && bytes > static_cast<double>(available)) {
    std::ostringstream message;
    message << std::fixed << std::setprecision(1) << "batch " << batch << " does not fit: its input"
            << " alone needs " << bytes / (1 << 20) << " MiB, but only "
            << static_cast<double>(available) / (1 << 20) << " MiB are available";
    throw dr::RunnerError(dr::ExitCode::kBatch, message.str());
  }
}

void dump_input(const at::Tensor& batch, const std::string& path) {
  std::ofstream file(path, std::ios::binary);
  const auto contiguous = batch.contiguous();
  file.write(reinterpret_cast<const char*>(contiguous.data_ptr<float>()),
             static_cast<std::streamsize>(contiguous.numel() * sizeof(float)));
  if (!file) {
    throw dr::RunnerError(dr::ExitCode::kUsage, "cannot write --dump-input file '" + path + "'");
  }
}

void print_predictions(const std::string& image, const at::Tensor& logits,
                       const dr::ExportMetadata& meta, const dr::RunnerOptions& options) {
  std::cout << image << "\n";
  if (options.print_logits) {
    std::cout << "  logits";
    const auto values = logits.contiguous();
    for (int64_t i = 0; i < values.numel(); ++i) {
      std::cout << " " << std::setprecision(9) << values.data_ptr<float>()[i];
    }
    std::cout << "\n";
  }
  const auto probabilities = at::softmax(logits, 0);
  const auto k = std::min<int64_t>(options.topk, probabilities.numel());
  const auto [scores, indices] = at::topk(probabilities, k);
  for (int64_t i = 0; i < k; ++i) {
    const auto index = indices[i].item<int64_t>();
    std::cout << "  " << std::fixed << std::setprecision(4) << scores[i].item<float>() << "  "
              << meta.label(index) << " (" << index << ")\n";
    std::cout.unsetf(std::ios::fixed);
  }
}

void classify(const dr::LoadedModel& model, const dr::RunnerOptions& options) {
  const auto& meta = model.metadata();
  const auto& images = options.images;
  const auto total = static_cast<int64_t>(images.size());
  const int64_t batch = options.batch > 0 ? std::min(options.batch, total) : total;
  check_batch_fits(batch, meta);
  std::vector<at::Tensor> inputs;
  for (int64_t begin = 0; begin < total; begin += batch) {
    const auto end = std::min(begin + batch, total);
    const std::vector<std::string> chunk(images.begin() + begin, images.begin() + end);
    const auto input = dr::preprocess_batch(chunk, meta);
    if (!options.dump_input.empty()) {
      inputs.push_back(input);
    }
    const auto logits = model.forward(input);
    for (int64_t i = 0; i < end - begin; ++i) {
      print_predictions(chunk[static_cast<size_t>(i)], logits[i], meta, options);
    }
  }
  if (!options.dump_input.empty()) {
    dump_input(at::cat(inputs), options.dump_input);
  }
}

int run(const dr::RunnerOptions& options) {
  if (options.threads > 0) {
    at::set_num_threads(options.threads);
  }
  const auto model = dr::LoadedModel::load(options.model, options.optimize, options.onednn_graph);
  if (!options.images.empty()) {
    classify(model, options);
  }
  if (options.bench) {
    const int64_t batch = options.batch > 0 ? options.batch : 1;
    check_batch_fits(batch, model.metadata());
    dr::run_benchmark(model, {batch, options.warmup, options.iters, options.profile_iters},
                      std::cout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto options = dr::parse_args(argc, argv);
    return options.help ? 0 : run(options);
  } catch (const dr::RunnerError& error) {
    std::cerr << "deeprebirth-run: error: " << error.what() << "\n";
    return static_cast<int>(error.code());
  } catch (const std::bad_alloc&) {
    std::cerr << "deeprebirth-run: error: the batch does not fit in memory (allocation failed)\n";
    return static_cast<int>(dr::ExitCode::kBatch);
  } catch (const c10::Error& error) {
    std::cerr << "deeprebirth-run: error: " << error.what_without_backtrace() << "\n";
    return static_cast<int>(dr::ExitCode::kInference);
  } catch (const std::exception& error) {
    std::cerr << "deeprebirth-run: internal error: " << error.what() << "\n";
    return static_cast<int>(dr::ExitCode::kInternal);
  }
}
