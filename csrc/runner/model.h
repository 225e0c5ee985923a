// Loading an exported model file (TorchScript, or lite interpreter) with its metadata.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>

#include "metadata.h"

namespace deeprebirth::runner {

// How the TorchScript interpreter starts its report of a failed operator.
inline constexpr const char* kInterpreterFailure =
    "The following operation failed in the TorchScript interpreter.";

// The line of a forward's error message that says what went wrong: for a TorchScript interpreter
// report, its last line (the original exception, after the TorchScript tracebacks); otherwise the
// first line.
std::string forward_failure_reason(const std::string& what);

class LoadedModel {
 public:
  // Loads `path` on the CPU. Throws RunnerError(kModel) for a missing, empty or corrupt file,
  // a file that is not a TorchScript / lite model, or one without deeprebirth metadata.
  // `optimize` applies torch::jit::optimize_for_inference to TorchScript modules; `onednn_graph`
  // turns on TorchScript's oneDNN Graph fuser (process-wide) for the forwards that follow, for
  // portable files only (RunnerError(kModel) otherwise).
  static LoadedModel load(const std::string& path, bool optimize = false,
                          bool onednn_graph = false);

  // Logits (N, classes) of a (N, C, H, W) batch, in inference mode. Throws RunnerError(kInference)
  // when the model rejects the batch (e.g. a traced model fixed to another size).
  at::Tensor forward(const at::Tensor& batch) const;

  const ExportMetadata& metadata() const { return metadata_; }
  // "torchscript" or "lite": the loader that read the file.
  const std::string& loader() const { return loader_; }

 private:
  std::function<at::Tensor(const at::Tensor&)> forward_;
  ExportMetadata metadata_;
  std::string loader_;
};

}  // namespace deeprebirth::runner
