// oneDNN convolution on packed weights kept across calls, for small_conv2d's large layers.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace deeprebirth::ops {

// Whether onednn_packed_conv2d can run this call, for a caller that wants no gradient: float32
// CPU tensors, oneDNN in the build and enabled, a weight that does not require grad (a frozen
// constant, not a trainable parameter that could be written through .data unseen by its version
// counter), and arguments conv2d accepts.
bool onednn_packed_conv_applies(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups);

// relu?(conv2d(x, w, b, ...)) by oneDNN on a packed copy of w made on the first call for x's shape
// and kept while w is the same tensor at the same version (an in-place update replaces the copy).
// ATen's conv2d reorders the weights on every call: at batch 1 that costs about as much as the
// arithmetic of a late layer, and TorchScript's frozen weights never change (docs/kernels.md).
// Layers Winograd computes (winograd_conv_applies) run winograd_conv2d on a transformed weight
// kept beside the packed copy where, timed on the first call for x's shape (three calls of each),
// it was faster than oneDNN; DEEPREBIRTH_PACKED_WINOGRAD=0 never runs it, =1 always does. A call
// whose input holds an infinity or NaN runs oneDNN.
at::Tensor onednn_packed_conv2d(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                bool relu);

// onednn_packed_conv2d's result written into `out` (shaped like it; channels_last or a channel
// slice of a channels_last tensor): Winograd writes there directly, oneDNN's output is copied.
void onednn_packed_conv2d_into(at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               bool relu);

// relu?(conv2d(x, w, b, ...) + residual) written over `residual`, which it returns: oneDNN adds
// the convolution into `residual` as it writes it (its "sum" post-op; a channels_last residual,
// else ATen's convolution then add), on the same packed copies as onednn_packed_conv2d. For a
// caller that wants no gradient and may overwrite `residual` (a residual block's fresh shortcut
// output); `residual` has the convolution's output shape, dtype and device.
at::Tensor& onednn_packed_conv2d_add_(at::Tensor& residual, const at::Tensor& x,
                                      const at::Tensor& w, const std::optional<at::Tensor>& b,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding,
                                      c10::IntArrayRef dilation, int64_t groups, bool relu);

// Packed copies held now (for tests), and dropping them all.
size_t onednn_packed_weight_count();
void clear_onednn_packed_weights();

}  // namespace deeprebirth::ops
