// Device-generic forward of branch_conv (see branch_conv_forward.h).
#include "ops/branch_conv/branch_conv_forward.h"

#include <ATen/ATen.h>

#include "ops/branch_conv/branch_conv_plan.h"

namespace deeprebirth::ops {

namespace {

// conv2d of one run (its concatenated weights and biases) over x, in x's layout.
at::Tensor run_convolution(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const BranchRun& run,
                           int64_t stride) {
  return at::conv2d(x, weight, bias, {stride, stride}, {run.padding, run.padding});
}

// (N*H*W, C) row view of an NCHW-shaped tensor laid out channels_last (a view, no copy).
at::Tensor pixel_rows(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).reshape({-1, t.size(1)});
}

// A 1x1 run's weights are C x C_in and its output C x pixels (pixels = N * H_out * W_out), so
// C_in / pixels is what concatenating the run's weights costs relative to what it writes. The
// reference's peak is about twice the output (branch outputs + their cat).

// Splits a 1x1 run back into its branches when its concatenated weights would exceed its output
// (C_in > pixels: batch-1 layers with large weights, e.g. inception_4a-5b at 14x14 and 7x7): the
// copy would dominate the call and raise the peak memory. Each branch then is a GEMM from its own
// weight straight into its slice.
std::vector<BranchRun> unmerge_weight_heavy_pointwise_runs(std::vector<BranchRun> runs,
                                                           at::TensorList weights, int64_t pixels) {
  std::vector<BranchRun> out;
  for (const BranchRun& run : runs) {
    if (!run.pointwise() || run.last - run.first == 1 || weights[run.first].size(1) <= pixels) {
      out.push_back(run);
      continue;
    }
    for (int64_t i = run.first, begin = run.channel_begin; i < run.last; ++i) {
      const int64_t end = begin + weights[i].size(0);
      out.push_back({i, i + 1, run.kh, run.kw, run.padding, begin, end});
      begin = end;
    }
  }
  return out;
}

}  // namespace

void copy_relu_into(const at::Tensor& dst, const at::Tensor& src, bool relu) {
  at::Tensor out = dst;  // the _out/copy_ calls write through this view
  if (relu) {
    at::clamp_min_out(out, src, 0);
  } else {
    out.copy_(src);
  }
}

void pointwise_gemm_aten(const at::Tensor& out_rows, const at::Tensor& x_rows,
                         const at::Tensor& weight2d, const std::optional<at::Tensor>& bias,
                         bool relu) {
  at::Tensor out = out_rows;  // addmm_out/mm_out write through this view into the output
  if (bias.has_value()) {
    at::addmm_out(out, *bias, x_rows, weight2d.t());
  } else {
    at::mm_out(out, x_rows, weight2d.t());
  }
  if (relu) out.clamp_min_(0);
}

at::Tensor branch_conv_forward(const at::Tensor& x, at::TensorList weights,
                               const OptionalTensorList& biases, c10::IntArrayRef paddings,
                               int64_t stride, bool relu, PointwiseGemmFn gemm) {
  const BranchConvGeometry g = check_branch_conv_args(x, weights, biases, paddings, stride);
  const at::MemoryFormat format = branch_conv_output_format(x);
  const int64_t total = g.channel_offsets.back();
  const int64_t batch = x.size(0), pixels = batch * g.out_h * g.out_w;
  if (batch == 0) {
    return at::empty({0, total, g.out_h, g.out_w}, x.options().memory_format(format));
  }
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const std::vector<BranchRun> runs =
      unmerge_weight_heavy_pointwise_runs(same_window_runs(weights, paddings, g), weights, pixels);

  // Every branch shares one window: one convolution is the output. Weight-heavy 1x1 runs too:
  // GEMMs per image or over all pixels lose to the convolution (the BLAS takes a narrower vector
  // path than oneDNN on some CPUs) while using no less memory (docs/kernels.md).
  if (runs.size() == 1) {
    const BranchRun& run = runs.front();
    at::Tensor out =
        run_convolution(x, run_weight(weights, run), run_bias(biases, run, g, x), run, stride)
            .contiguous(format);
    if (relu) out.clamp_min_(0);
    return out;
  }

  at::Tensor out = at::empty({batch, total, g.out_h, g.out_w}, x.options().memory_format(format));
  at::Tensor x_rows;  // the GEMM operand, made on first use
  for (const BranchRun& run : runs) {
    at::Tensor slice = out.narrow(1, run.channel_begin, run.channels());
    const at::Tensor weight = run_weight(weights, run);
    const std::optional<at::Tensor> bias = run_bias(biases, run, g, x);
    // A weight-heavy 1x1 branch (C_in > pixels) runs the reference's own convolution on x and
    // writes it into its slice: the GEMMs per image or over a one-row image that ran here before
    // were up to 1.8x slower than the reference on the Xeon (inception_5a/5b NCHW at batch 8,
    // 4b-4e channels_last at batch 1; docs/kernels.md).
    const bool weight_heavy =
        run.pointwise() && run.last - run.first == 1 && weights[run.first].size(1) > pixels;
    if (run.pointwise() && stride == 1 && channels_last && !weight_heavy) {  // one GEMM
      if (!x_rows.defined()) x_rows = pixel_rows(x);
      gemm(pixel_rows(slice), x_rows, weight.reshape({run.channels(), -1}), bias, relu);
    } else {
      copy_relu_into(slice, run_convolution(x, weight, bias, run, stride), relu);
    }
  }
  return out;
}

}  // namespace deeprebirth::ops
