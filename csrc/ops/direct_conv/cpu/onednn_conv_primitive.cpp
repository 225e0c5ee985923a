// Convolutions as executable oneDNN primitives (see onednn_conv_primitive.h).
#include "ops/direct_conv/cpu/onednn_conv_primitive.h"

#include "ops/common/env_switch.h"

#ifdef DEEPREBIRTH_WITH_ONEDNN

#include <ATen/ATen.h>

#include <unordered_map>

#include "ops/common/arg_checks.h"
#include "ops/common/cache_evict.h"

// oneDNN's C++ API is header-only over its C API: keep its inline functions out of this library's
// exported symbols (libtorch_cpu holds another oneDNN release, hidden). The C API, declared
// first, is what libdnnl exports.
#include <oneapi/dnnl/dnnl.h>
#pragma GCC visibility push(hidden)
#include <oneapi/dnnl/dnnl.hpp>
#pragma GCC visibility pop

namespace deeprebirth::ops {

// Hidden, as the oneDNN types it holds: C++ callers only pass it around (the header's functions).
class __attribute__((visibility("hidden"))) OneDnnConv {
 public:
  dnnl::convolution_forward primitive;
  dnnl::memory::desc src;
  dnnl::memory::desc bias;  // zero (empty) without a bias
  dnnl::memory::desc dst;
  dnnl::memory weight;  // in the layout the primitive reads
  std::string implementation;
};

namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

bool loaded_release_matches() {
  const dnnl_version_t* loaded = dnnl_version();
  return loaded->major == DNNL_VERSION_MAJOR && loaded->minor == DNNL_VERSION_MINOR;
}

dnnl::memory::dims dims_of(c10::IntArrayRef sizes) {
  return dnnl::memory::dims(sizes.begin(), sizes.end());
}

// oneDNN's name for an implementation that is not its reference (plain loop) one.
bool optimized(const std::string& implementation) { return implementation.rfind("ref", 0) != 0; }

}  // namespace

bool onednn_primitives_built() {
  static const bool matches = loaded_release_matches();
  return matches;
}

bool onednn_primitives_available() {
  return onednn_primitives_built() && env_switch_on("DEEPREBIRTH_ONEDNN_PRIMITIVES");
}

std::string onednn_primitives_version() {
  if (!onednn_primitives_built()) return "";
  const dnnl_version_t* loaded = dnnl_version();
  return std::to_string(loaded->major) + "." + std::to_string(loaded->minor) + "." +
         std::to_string(loaded->patch);
}

std::shared_ptr<const OneDnnConv> make_onednn_conv(const at::Tensor& x, const at::Tensor& w,
                                                   const std::optional<at::Tensor>& b,
                                                   c10::IntArrayRef stride,
                                                   c10::IntArrayRef padding,
                                                   c10::IntArrayRef dilation, int64_t groups,
                                                   ConvEpilogue epilogue) {
  if (!onednn_primitives_available()) return nullptr;
  using dnnl::memory;
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  const dnnl::memory::dims out = conv2d_output_shape(x, w, stride, padding, dilation);
  // oneDNN's weight for groups > 1 is (groups, out / groups, in / groups, kh, kw): the same
  // memory as torch's (out, in / groups, kh, kw)
  const dnnl::memory::dims weight_dims =
      groups == 1 ? dims_of(w.sizes())
                  : memory::dims{groups, w.size(0) / groups, w.size(1), w.size(2), w.size(3)};
  const bool with_bias = b.has_value() && b->defined();
  auto conv = std::make_shared<OneDnnConv>();
  conv->src = memory::desc(dims_of(x.sizes()), f32, tag::nhwc);
  conv->dst = memory::desc(out, f32, tag::nhwc);
  if (with_bias) conv->bias = memory::desc({w.size(0)}, f32, tag::a);
  dnnl::post_ops post_ops;
  if (epilogue == ConvEpilogue::kAdd || epilogue == ConvEpilogue::kAddRelu) {
    post_ops.append_sum(1.0f);
  }
  if (epilogue == ConvEpilogue::kRelu || epilogue == ConvEpilogue::kAddRelu) {
    post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops);
  const memory::dims strides = dims_of(stride);
  const memory::dims pads = dims_of(padding);
  // oneDNN counts dilation from 0 (no gaps), torch from 1
  const memory::dims gaps{dilation[0] - 1, dilation[1] - 1};
  const memory::desc any_weight(weight_dims, f32, tag::any);
  dnnl::convolution_forward::primitive_desc pd;
  try {
    pd = dnnl::convolution_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        conv->src, any_weight, conv->bias, conv->dst, strides, gaps, pads, pads, attr);
  } catch (const dnnl::error&) {
    return nullptr;  // no implementation for this layer: ATen's path runs it
  }
  conv->implementation = pd.impl_info_str();
  if (!optimized(conv->implementation)) return nullptr;
  conv->primitive = dnnl::convolution_forward(pd);
  const at::Tensor dense_w = w.contiguous();
  memory given({weight_dims, f32, groups == 1 ? tag::oihw : tag::goihw}, cpu_engine(),
               dense_w.data_ptr());
  conv->weight = memory(pd.weights_desc(), cpu_engine());
  dnnl::stream stream(cpu_engine());
  dnnl::reorder(given, conv->weight).execute(stream, given, conv->weight);
  stream.wait();
  return conv;
}

void run_onednn_conv(const OneDnnConv& conv, const at::Tensor& x,
                     const std::optional<at::Tensor>& b, at::Tensor& out) {
  thread_local dnnl::stream stream(cpu_engine());
  dnnl::memory src(conv.src, cpu_engine(), x.data_ptr());
  dnnl::memory dst(conv.dst, cpu_engine(), out.data_ptr());
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, conv.weight}, {DNNL_ARG_DST, dst}};
  at::Tensor bias;
  if (b.has_value() && b->defined()) {
    bias = b->contiguous();
    args.emplace(DNNL_ARG_BIAS, dnnl::memory(conv.bias, cpu_engine(), bias.data_ptr()));
  }
  conv.primitive.execute(stream, args);
  stream.wait();
}

void evict_onednn_conv_weight(const OneDnnConv& conv) {
  evict_from_caches(conv.weight.get_data_handle(), conv.weight.get_desc().get_size());
}

std::string onednn_conv_implementation(const OneDnnConv& conv) { return conv.implementation; }

}  // namespace deeprebirth::ops

#else  // built without oneDNN: ATen's path runs every packed convolution

#include <c10/util/Exception.h>

namespace deeprebirth::ops {

class OneDnnConv {};

bool onednn_primitives_available() { return false; }

bool onednn_primitives_built() { return false; }

std::string onednn_primitives_version() { return ""; }

std::shared_ptr<const OneDnnConv> make_onednn_conv(const at::Tensor&, const at::Tensor&,
                                                   const std::optional<at::Tensor>&,
                                                   c10::IntArrayRef, c10::IntArrayRef,
                                                   c10::IntArrayRef, int64_t, ConvEpilogue) {
  return nullptr;
}

void run_onednn_conv(const OneDnnConv&, const at::Tensor&, const std::optional<at::Tensor>&,
                     at::Tensor&) {
  TORCH_CHECK(false, "deeprebirth was built without oneDNN: no oneDNN convolution to run");
}

void evict_onednn_conv_weight(const OneDnnConv&) {}

std::string onednn_conv_implementation(const OneDnnConv&) { return ""; }

}  // namespace deeprebirth::ops

#endif
