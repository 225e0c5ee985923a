// Facts about how the operator library was built and how ATen runs it.
#pragma once

#include <string>

namespace deeprebirth {

struct BuildInfo {
  std::string version;           // deeprebirth version
  std::string torch_version;     // the torch headers it was compiled against
  bool with_cuda;                // CUDA kernels compiled in
  std::string parallel_backend;  // ATen's intra-op backend (OpenMP, native thread pool, TBB)
  bool parallel_kernels;         // at::parallel_for in these kernels uses that backend's threads
                                 // (false: built without it, every kernel loop is serial)
  int num_threads;               // at::get_num_threads() now
  std::string onednn;            // the oneDNN release packed convolutions run their own
                                 // primitives on ("" without: ATen's oneDNN path runs them)
};

BuildInfo build_info();

}  // namespace deeprebirth
