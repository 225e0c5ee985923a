// A convolution layer compiled once into an executable oneDNN primitive, for the packed path.
//
// ATen's oneDNN convolution (mkldnn::_convolution_pointwise) keeps a packed weight but not an
// executable primitive: each call builds the primitive descriptor again, 20-25 us per call on
// the CPUs measured, as much as a small layer's arithmetic at batch 1 (docs/kernels.md, "Per-call
// cost of oneDNN through ATen"). Here the primitive, and the weight in the layout it reads, are
// made once per layer and input shape, and a call only executes it. This needs oneDNN's API,
// which torch does not export: the library is built against a oneDNN of its own where one is
// found (setup.py, CMakeLists.txt: DEEPREBIRTH_WITH_ONEDNN); without it every function here
// reports the path unavailable and the packed path runs through ATen as before.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

namespace deeprebirth::ops {

// What a convolution's output gets on the way out: nothing, a ReLU, the previous contents of the
// output added (a residual), or both (added, then ReLU).
enum class ConvEpilogue { kNone, kRelu, kAdd, kAddRelu };

// Whether packed convolutions are made into oneDNN primitives of their own now: compiled with
// oneDNN, the loaded oneDNN is the release it was compiled against, and
// DEEPREBIRTH_ONEDNN_PRIMITIVES is not "0" (read at each call: a layer reads it when it packs its
// weight for an input shape, and keeps what it made).
bool onednn_primitives_available();

// Whether this build can make them at all: compiled with oneDNN, and the loaded oneDNN is the
// release it was compiled against (whatever DEEPREBIRTH_ONEDNN_PRIMITIVES says).
bool onednn_primitives_built();

// The oneDNN release the primitives run on ("3.2.0"), or "" where the library was built without
// one or another release is loaded (whatever DEEPREBIRTH_ONEDNN_PRIMITIVES says).
std::string onednn_primitives_version();

class OneDnnConv;

// The primitive computing epilogue(conv2d(x, w, b, stride, padding, dilation, groups)) for inputs
// shaped like x, channels_last in and out, with its own copy of w in the layout it reads (b is
// read at each call). Null where the primitives are unavailable or oneDNN has only its reference
// implementation for the layer (slower than ATen's path, which then runs it).
std::shared_ptr<const OneDnnConv> make_onednn_conv(const at::Tensor& x, const at::Tensor& w,
                                                   const std::optional<at::Tensor>& b,
                                                   c10::IntArrayRef stride,
                                                   c10::IntArrayRef padding,
                                                   c10::IntArrayRef dilation, int64_t groups,
                                                   ConvEpilogue epilogue);

// Runs `conv` on x (channels_last, shaped as at make_onednn_conv) into out (channels_last, the
// convolution's output shape; with an adding epilogue, its contents are the residual). b must be
// defined exactly when it was at make_onednn_conv.
void run_onednn_conv(const OneDnnConv& conv, const at::Tensor& x,
                     const std::optional<at::Tensor>& b, at::Tensor& out);

// Evicts conv's weight copy from the CPU's caches (evict_from_caches).
void evict_onednn_conv_weight(const OneDnnConv& conv);

// oneDNN's name of the implementation the primitive runs ("brg_conv_fwd:avx512_core").
std::string onednn_conv_implementation(const OneDnnConv& conv);

}  // namespace deeprebirth::ops
