// deeprebirth::direct_conv — relu?(conv2d(x, w, b)) for small layers, computed directly (no
// im2col, no GEMM library call) on a weight packed once by direct_conv_pack.
//
// Schema (registered in direct_conv.cpp):
//   direct_conv_pack(Tensor w) -> Tensor
//   direct_conv(Tensor x, Tensor packed_w, Tensor? b, int out_channels, int[2] stride,
//               int[2] padding, bool relu) -> Tensor
//   small_conv2d(Tensor x, Tensor w, Tensor packed_w, Tensor? b, int[2] stride, int[2] padding,
//                int[2] dilation, int groups, bool relu, int max_macs, int max_1x1_pixels)
//                -> Tensor
//   small_conv2d_add_(Tensor(a!) residual, Tensor x, Tensor w, Tensor packed_w, Tensor? b,
//                     int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu,
//                     int max_macs, int max_1x1_pixels) -> Tensor(a!)
//   direct_conv_cat(Tensor[] xs, Tensor[] packed_ws, Tensor?[] bs, int[] out_channels,
//                   int[] strides, int[] paddings, bool relu) -> Tensor
//   small_conv2d_cat(Tensor[] xs, Tensor[] ws, Tensor[] packed_ws, Tensor?[] bs, int[] strides,
//                    int[] paddings, bool relu, int max_macs, int max_1x1_pixels) -> Tensor
//   direct_conv_isa() -> str
// The _cat forms are cat([relu?(conv2d(xs[i], w_i, bs[i]))], 1) with each branch written straight
// into its channels of the output (no torch.cat): an Inception module's branches after branch
// slimming. strides and paddings hold one (h, w) pair per branch.
// For the layers of small networks at small batches (a Fashion-MNIST-size GoogLeNet: every layer
// under 2M multiply-accumulates), where a convolution library's fixed cost per call (im2col,
// GEMM setup, weight reorders) exceeds the arithmetic. Ungrouped, undilated, zero padding, float32
// on the CPU; inference only (no gradient). The output is contiguous NCHW.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace deeprebirth::ops {

// Output channels per block of the packed weight: one 512-bit vector of float32 (two 256-bit or
// four 128-bit ones).
constexpr int64_t kDirectConvBlock = 16;

// Sizes of a validated direct_conv call.
struct DirectConvGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w, out_h, out_w;
};

// The weight (C_out, C_in, kh, kw) as direct_conv reads it: (ceil(C_out / 16), C_in, kh, kw, 16),
// output channel c at [c / 16, ..., c % 16], the lanes past C_out zero. Pure data movement (ATen
// calls): any dtype and device.
at::Tensor direct_conv_pack(const at::Tensor& w);

// Validates every argument (ranks, dtypes, devices, the packed weight's layout against x and
// out_channels, positive strides, non-negative padding, at least one input channel, a non-empty
// kernel that fits the padded input) and returns the sizes. The kernel and the fake
// implementation's sizes follow from it.
DirectConvGeometry check_direct_conv_args(const at::Tensor& x, const at::Tensor& packed_w,
                                          const std::optional<at::Tensor>& b, int64_t out_channels,
                                          c10::IntArrayRef stride, c10::IntArrayRef padding);

// Whether direct_conv computes conv2d(x, w) with these settings and pays there: a float32 CPU
// input, ungrouped and undilated, fewer than max_macs multiply-accumulates, and for a 1x1 kernel
// at most max_1x1_pixels output pixels per image (a GEMM over the pixels wins above that). False
// for arguments conv2d rejects (strides <= 0, negative padding, an empty kernel) and for zero
// channels, so that conv2d reports or computes them; any arguments are safe to pass.
bool direct_conv_pays(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                      c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                      int64_t max_macs, int64_t max_1x1_pixels);

// relu?(conv2d(x, w, b)) where no gradient is needed: for a weight that does not require grad (a
// frozen constant), by the fastest for x's shape, timed on its first call, of oneDNN and Winograd
// on copies kept across calls and, where direct_conv_pays, direct_conv on packed_w =
// direct_conv_pack(w) (onednn_packed_conv.h; the output channels_last); for other weights by
// direct_conv where it pays. By at::conv2d otherwise (which autograd sees).
// One call whatever the input, so a TorchScript graph that runs it needs no branches of its own.
// Off the packed path, the output is in the memory format conv2d gives (channels_last for a
// channels_last x).
at::Tensor small_conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& packed_w,
                        const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                        bool relu, int64_t max_macs, int64_t max_1x1_pixels);

// relu?(small_conv2d(x, ...) + residual) written over `residual`, which it returns (a residual
// block's last convolution and its shortcut's fresh output). Where small_conv2d would run oneDNN
// on a packed frozen weight and no gradient is needed, oneDNN adds into `residual` as it writes;
// elsewhere small_conv2d, add_ and relu_, which autograd sees.
at::Tensor& small_conv2d_add_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                              const at::Tensor& packed_w, const std::optional<at::Tensor>& b,
                              c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation, int64_t groups, bool relu,
                              int64_t max_macs, int64_t max_1x1_pixels);

// check_direct_conv_args for every branch of direct_conv_cat (the message names the branch), and
// requires at least one branch, one pair of strides and paddings per branch, and outputs of one
// batch size and spatial size. Returns each branch's sizes.
std::vector<DirectConvGeometry> check_direct_conv_cat_args(
    at::TensorList xs, at::TensorList packed_ws, const c10::List<std::optional<at::Tensor>>& bs,
    c10::IntArrayRef out_channels, c10::IntArrayRef strides, c10::IntArrayRef paddings);

// direct_conv_cat where no gradient is needed and direct_conv_pays for every branch (ungrouped,
// undilated), unless the weights are frozen and the output can be channels_last: each branch then
// takes small_conv2d's timed choice and writes into its channels of the output. torch.cat of
// small_conv2d calls otherwise; channels_last when xs[0] is.
at::Tensor small_conv2d_cat(at::TensorList xs, at::TensorList ws, at::TensorList packed_ws,
                            const c10::List<std::optional<at::Tensor>>& bs,
                            c10::IntArrayRef strides, c10::IntArrayRef paddings, bool relu,
                            int64_t max_macs, int64_t max_1x1_pixels);

// Calls deeprebirth::direct_conv_cat through the dispatcher.
at::Tensor direct_conv_cat(at::TensorList xs, at::TensorList packed_ws,
                           const c10::List<std::optional<at::Tensor>>& bs,
                           c10::IntArrayRef out_channels, c10::IntArrayRef strides,
                           c10::IntArrayRef paddings, bool relu);

// Calls deeprebirth::direct_conv through the dispatcher.
at::Tensor direct_conv(const at::Tensor& x, const at::Tensor& packed_w,
                       const std::optional<at::Tensor>& b, int64_t out_channels,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, bool relu);

// The instruction set of the CPU kernel this process runs: "avx512", "avx2" or "sse2" on x86-64
// (cpu_isa(): the widest the CPU has, or the one the environment variable DEEPREBIRTH_CPU_ISA names
// when the CPU has it; read once), "portable" elsewhere. Also deeprebirth::direct_conv_isa().
std::string direct_conv_isa();

}  // namespace deeprebirth::ops
