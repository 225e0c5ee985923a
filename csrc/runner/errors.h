// Errors of deeprebirth-run: each carries the process exit code that reports it.
#pragma once

#include <stdexcept>
#include <string>

namespace deeprebirth::runner {

// Process exit codes; documented in `deeprebirth-run --help` and the README.
enum class ExitCode : int {
  kOk = 0,
  kInternal = 1,   // unexpected failure (a bug)
  kUsage = 2,      // bad command line
  kModel = 3,      // model file missing, empty, corrupt, not a TorchScript model, no metadata
  kImage = 4,      // image missing, empty, undecodable, unsupported depth/channels
  kBatch = 5,      // the batch does not fit in memory
  kInference = 6,  // the model rejected the input (e.g. a traced model fixed to another size)
};

// An error with a message for the user and the exit code to return.
class RunnerError : public std::runtime_error {
 public:
  RunnerError(ExitCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

}  // namespace deeprebirth::runner
