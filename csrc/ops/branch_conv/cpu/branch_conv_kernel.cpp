// CPU kernel of deeprebirth::branch_conv.
// For now the reference composite; the merged-GEMM kernel replaces it.
#include <torch/library.h>

#include "ops/branch_conv/branch_conv.h"

namespace deeprebirth::ops {

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) { m.impl("branch_conv", &branch_conv_reference); }

}  // namespace deeprebirth::ops
