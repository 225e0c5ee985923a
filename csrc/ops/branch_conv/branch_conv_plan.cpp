// Grouping of branch_conv's branches into same-window runs and their concatenated parameters.
#include "ops/branch_conv/branch_conv_plan.h"

#include <ATen/ATen.h>

namespace deeprebirth::ops {

std::vector<BranchRun> same_window_runs(at::TensorList weights, c10::IntArrayRef paddings,
                                        const BranchConvGeometry& geometry) {
  std::vector<BranchRun> runs;
  const auto branches = static_cast<int64_t>(weights.size());
  for (int64_t i = 0; i < branches; ++i) {
    const int64_t kh = weights[i].size(2), kw = weights[i].size(3), p = paddings[i];
    if (!runs.empty() && runs.back().kh == kh && runs.back().kw == kw && runs.back().padding == p) {
      runs.back().last = i + 1;
      runs.back().channel_end = geometry.channel_offsets[i + 1];
    } else {
      runs.push_back(
          {i, i + 1, kh, kw, p, geometry.channel_offsets[i], geometry.channel_offsets[i + 1]});
    }
  }
  return runs;
}

at::Tensor run_weight(at::TensorList weights, const BranchRun& run) {
  if (run.last - run.first == 1) return weights[run.first];
  return at::cat(weights.slice(run.first, run.last - run.first), 0);
}

std::optional<at::Tensor> run_bias(const OptionalTensorList& biases, const BranchRun& run,
                                   const BranchConvGeometry& geometry, const at::Tensor& like) {
  bool any = false;
  for (int64_t i = run.first; i < run.last; ++i) {
    const std::optional<at::Tensor> b = biases[i];
    any = any || (b.has_value() && b->defined());
  }
  if (!any) return std::nullopt;
  if (run.last - run.first == 1) return biases[run.first].value();
  at::Tensor bias = at::zeros({run.channels()}, like.options());
  for (int64_t i = run.first; i < run.last; ++i) {
    const std::optional<at::Tensor> b = biases[i];
    const int64_t offset = geometry.channel_offsets[i] - run.channel_begin;
    if (b.has_value() && b->defined()) bias.narrow(0, offset, b->size(0)).copy_(*b);
  }
  return bias;
}

at::MemoryFormat branch_conv_output_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace deeprebirth::ops
