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
// On the first call for x's shape, oneDNN is timed (three calls of each, each kernel's weight
// copy evicted from the caches first; DEEPREBIRTH_PACKED_TIMING=warm leaves it there) against the
// other kernels that can compute the layer, and the fastest is kept for that shape: winograd_conv2d
// on a transformed weight (F(2x2, 3x3) or F(4x4, 3x3), whichever was faster) kept beside the
// packed copy, for layers Winograd computes (winograd_conv_applies; DEEPREBIRTH_PACKED_WINOGRAD=0
// never runs it, =1 always runs F(2x2, 3x3), =4 always F(4x4, 3x3)), and
// direct_conv on `direct_w` (direct_conv_pack(w)) where the caller gives it defined (a layer
// direct_conv_pays for). A call whose input holds an infinity or NaN does not run Winograd. The
// output is channels_last, as oneDNN writes it, whichever kernel runs and whatever x's layout.
at::Tensor onednn_packed_conv2d(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                bool relu, const at::Tensor& direct_w);

// onednn_packed_conv2d's result written into `out` (shaped like it; channels_last or a channel
// slice of a channels_last tensor): Winograd writes there directly, the others' output is copied.
void onednn_packed_conv2d_into(at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               bool relu, const at::Tensor& direct_w);

// relu?(conv2d(x, w, b, ...) + residual) written over `residual`, which it returns: oneDNN adds
// the convolution into `residual` as it writes it (its "sum" post-op; a channels_last residual,
// else ATen's convolution then add), on the same packed copies as onednn_packed_conv2d (oneDNN
// whatever kernel onednn_packed_conv2d chose: only it adds as it writes). For a
// caller that wants no gradient and may overwrite `residual` (a residual block's fresh shortcut
// output); `residual` has the convolution's output shape, dtype and device.
at::Tensor& onednn_packed_conv2d_add_(at::Tensor& residual, const at::Tensor& x,
                                      const at::Tensor& w, const std::optional<at::Tensor>& b,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding,
                                      c10::IntArrayRef dilation, int64_t groups, bool relu);

// The operators deeprebirth::onednn_conv2d(.out) and onednn_conv2d_add_, which run a layer's own
// oneDNN primitive (onednn_conv_primitive.h) on frozen weights: relu?(conv2d(x, w, b, ...)) as a
// new channels_last tensor, into `out`, or added into `residual` (relu?(conv + residual)). Each
// makes the layer's primitive on its first call for w (at its version), x's shape and the
// epilogue, and keeps it as the packed copies are kept. Where there is none (built without
// oneDNN, inputs or outputs not channels_last, a weight that requires grad) they compute the same
// with ATen. The packed path calls them through the dispatcher, so that profilers, FLOP counters
// and recorded op plans see each layer as one operator.
at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         bool relu);
at::Tensor& onednn_conv2d_out(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                              bool relu, at::Tensor& out);
at::Tensor& onednn_conv2d_add_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               bool relu);

// Packed copies held now (for tests), and dropping them all.
size_t onednn_packed_weight_count();
void clear_onednn_packed_weights();

}  // namespace deeprebirth::ops
