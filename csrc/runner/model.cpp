// torch::jit::load (or the lite interpreter) + the deeprebirth.json extra file.
#include "model.h"

#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/mobile/import.h>
#include <torch/csrc/jit/mobile/module.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <string>

#include "errors.h"

namespace deeprebirth::runner {

namespace {

RunnerError model_error(const std::string& path, const std::string& what) {
  return RunnerError(ExitCode::kModel, "model '" + path + "': " + what);
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

RunnerError inference_error(const at::Tensor& batch, const std::string& what) {
  return RunnerError(ExitCode::kInference, "the model rejected a " + std::to_string(batch.size(0)) +
                                               "-image batch: " + forward_failure_reason(what));
}

// TorchScript, lite and .pt2 files are zip archives: anything else is not a model we can load.
bool is_zip_archive(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  char magic[4] = {};
  file.read(magic, sizeof magic);
  return file.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

}  // namespace

std::string forward_failure_reason(const std::string& what) {
  if (what.rfind(kInterpreterFailure, 0) != 0) {
    return first_line(what);
  }
  const auto end = what.find_last_not_of(" \n");  // not npos: `what` starts with the prefix
  const auto newline = what.rfind('\n', end);
  const auto begin = newline == std::string::npos ? 0 : newline + 1;
  return what.substr(begin, end + 1 - begin);
}

LoadedModel LoadedModel::load(const std::string& path, bool optimize, bool onednn_graph) {
  std::error_code ignored;
  if (!std::filesystem::is_regular_file(path, ignored)) {
    throw model_error(path, "file not found");
  }
  if (std::filesystem::file_size(path, ignored) == 0) {
    throw model_error(path, "file is empty");
  }
  if (!is_zip_archive(path)) {
    throw model_error(path,
                      "not a TorchScript model (not a zip archive; ONNX files run in ONNX "
                      "Runtime, deeprebirth model checkpoints must be exported first with "
                      "`deeprebirth export --format torchscript`)");
  }
  LoadedModel model;
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  try {
    auto module = std::make_shared<torch::jit::Module>(torch::jit::load(path, at::kCPU, extra));
    module->eval();
    if (optimize) {
      // Exports are frozen; this adds the MKLDNN rewrites that cannot be saved in the file.
      *module = torch::jit::optimize_for_inference(*module);
    }
    model.forward_ = [module](const at::Tensor& batch) {
      return module->forward({batch}).toTensor();
    };
    model.loader_ = "torchscript";
  } catch (const c10::Error& jit_error) {
    try {
      extra[kMetadataFile] = "";
      auto module = std::make_shared<torch::jit::mobile::Module>(
          torch::jit::_load_for_mobile(path, at::kCPU, extra));
      model.forward_ = [module](const at::Tensor& batch) {
        return module->forward({batch}).toTensor();
      };
      model.loader_ = "lite";
    } catch (const c10::Error&) {
      const std::string reason = first_line(jit_error.what_without_backtrace());
      const bool missing_op = reason.find("deeprebirth::") != std::string::npos;
      throw model_error(path, (missing_op ? "needs deeprebirth's operators: "
                                          : "corrupt or not a "
                                            "TorchScript "
                                            "model: ") +
                                  reason);
    }
  }
  if (extra[kMetadataFile].empty()) {
    throw model_error(path, std::string("carries no ") + kMetadataFile +
                                " metadata (export it with `deeprebirth export`)");
  }
  try {
    model.metadata_ = parse_metadata(extra[kMetadataFile]);
  } catch (const std::invalid_argument& error) {
    throw model_error(path, error.what());
  }
  if (onednn_graph) {
    // The fuser fails inside LibTorch on graphs that hold deeprebirth's operators.
    if (!model.metadata_.portable) {
      throw model_error(path,
                        "--onednn-graph needs a portable export (no deeprebirth operators): "
                        "export it with `deeprebirth export --portable`");
    }
    // The fuser rewrites each input shape's graph during its first forwards (the warm-up).
    torch::jit::RegisterLlgaFuseGraph::setEnabled(true);
  }
  return model;
}

at::Tensor LoadedModel::forward(const at::Tensor& batch) const {
  c10::InferenceMode guard;
  try {
    return forward_(batch);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const c10::Error& error) {
    throw inference_error(batch, error.what_without_backtrace());
  } catch (const std::exception& error) {
    // The TorchScript interpreter reports an operator's failure as a std::runtime_error.
    throw inference_error(batch, error.what());
  }
}

}  // namespace deeprebirth::runner
