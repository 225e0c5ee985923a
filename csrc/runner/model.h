// Loading an exported model file (TorchScript, or lite interpreter) with its metadata.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>

#include "metadata.h"

namespace deeprebirth::runner {

class LoadedModel {
 public:
  // Loads `path` on the CPU. Throws RunnerError(kModel) for a missing, empty or corrupt file,
  // a file that is not a TorchScript / lite model, or one without deeprebirth metadata.
  // `optimize` applies torch::jit::optimize_for_inference to TorchScript modules.
  static LoadedModel load(const std::string& path, bool optimize = false);

  // Logits (N, classes) of a (N, 3, H, W) batch, in inference mode.
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
