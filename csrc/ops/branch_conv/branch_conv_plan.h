// How branch_conv splits its branches into calls: runs of consecutive branches that share one
// window (kernel size and padding) become one convolution/GEMM over concatenated weights, written
// into one contiguous channel slice of the output. Shared by the CPU and CUDA kernels and by the
// backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

#include "ops/branch_conv/branch_conv.h"

namespace deeprebirth::ops {

// Branches [first, last) share kernel kh x kw and padding; their outputs are the channels
// [channel_begin, channel_end) of the concatenated output.
struct BranchRun {
  int64_t first, last;
  int64_t kh, kw, padding;
  int64_t channel_begin, channel_end;

  int64_t channels() const { return channel_end - channel_begin; }
  // A 1x1 kernel with no padding: at stride 1 a plain GEMM over the input's pixels.
  bool pointwise() const { return kh == 1 && kw == 1 && padding == 0; }
};

// Maximal runs of consecutive branches with equal (kh, kw, padding), in branch order.
// Precondition: the arguments passed check_branch_conv_args, which returned `geometry`.
std::vector<BranchRun> same_window_runs(at::TensorList weights, c10::IntArrayRef paddings,
                                        const BranchConvGeometry& geometry);

// The run's weights concatenated along output channels, (C_run, C_in, kh, kw); the branch's own
// weight (no copy) when the run has one branch.
at::Tensor run_weight(at::TensorList weights, const BranchRun& run);

// The run's biases concatenated (zeros for branches without one), or nullopt when no branch of
// the run has a bias. `like` gives dtype and device.
std::optional<at::Tensor> run_bias(const OptionalTensorList& biases, const BranchRun& run,
                                   const BranchConvGeometry& geometry, const at::Tensor& like);

// The memory format of branch_conv's output (and of its gradient w.r.t. x): channels_last when x
// is channels_last-contiguous and not plainly contiguous, else contiguous. The fake
// implementation (deeprebirth/ops/_fake.py) applies the same rule.
at::MemoryFormat branch_conv_output_format(const at::Tensor& x);

}  // namespace deeprebirth::ops
