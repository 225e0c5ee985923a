#include "ops/build_info.h"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include "ops/direct_conv/cpu/onednn_conv_primitive.h"

#ifndef DEEPREBIRTH_VERSION
#define DEEPREBIRTH_VERSION "unknown"
#endif

namespace deeprebirth {

namespace {
std::string parallel_backend_name() {
#if AT_PARALLEL_OPENMP
  return "OpenMP";
#elif AT_PARALLEL_NATIVE
  return "native thread pool";
#else
  return "unknown";
#endif
}
}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.version = DEEPREBIRTH_VERSION;
  info.torch_version = TORCH_VERSION;
#ifdef DEEPREBIRTH_WITH_CUDA
  info.with_cuda = true;
#else
  info.with_cuda = false;
#endif
  info.parallel_backend = parallel_backend_name();
  // ATen's parallel headers define INTRA_OP_PARALLEL when this compilation can run the backend
  // (for OpenMP: only under -fopenmp).
#ifdef INTRA_OP_PARALLEL
  info.parallel_kernels = true;
#else
  info.parallel_kernels = false;
#endif
  info.num_threads = at::get_num_threads();
  info.onednn = ops::onednn_primitives_version();
  return info;
}

}  // namespace deeprebirth
