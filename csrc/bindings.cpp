// The pybind11 module deeprebirth._C. Loading it registers the operators (their static
// TORCH_LIBRARY registrations run on load); the module itself exposes build facts.
#include <torch/extension.h>

#include "ops/build_info.h"
#include "plan/op_plan.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deeprebirth operator library (conv_pool, branch_conv, direct_conv) and build facts";
  m.def(
      "build_info",
      [] {
        const deeprebirth::BuildInfo info = deeprebirth::build_info();
        pybind11::dict d;
        d["version"] = info.version;
        d["torch_version"] = info.torch_version;
        d["with_cuda"] = info.with_cuda;
        d["parallel_backend"] = info.parallel_backend;
        d["parallel_kernels"] = info.parallel_kernels;
        d["num_threads"] = info.num_threads;
        d["onednn"] = info.onednn;
        return d;
      },
      "Build facts: version, torch_version, with_cuda, parallel_backend, parallel_kernels, "
      "num_threads, onednn.");
  deeprebirth::plan::bind_op_plan(m);
}
