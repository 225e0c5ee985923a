// Claims the deeprebirth operator namespace. Each operator defines its schema in its own folder
// with TORCH_LIBRARY_FRAGMENT and registers kernels per dispatch key with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(deeprebirth, m) {
  // Fake (meta) implementations for torch.compile / torch.export live in Python; importing this
  // module before tracing makes sure they are registered.
  m.set_python_module("deeprebirth.ops._fake");
}
