// Packed-weight oneDNN convolution with a process-wide cache (see onednn_packed_conv.h).
#include "ops/direct_conv/cpu/onednn_packed_conv.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include "ops/common/arg_checks.h"
#include "ops/common/cache_evict.h"
#include "ops/common/channels_last.h"
#include "ops/direct_conv/cpu/onednn_conv_primitive.h"
#include "ops/direct_conv/direct_conv.h"
#include "ops/winograd_conv/cpu/winograd_conv_kernel.h"
#include "ops/winograd_conv/winograd_conv.h"

namespace deeprebirth::ops {

namespace {

// How a weight is kept for one input shape, geometry and epilogue: oneDNN's copy (our own
// executable primitive holding it where this build has one for the layer, else ATen's packed copy)
// and the kernel that ran fastest on this CPU among those that can compute the layer (decided by
// timing them on the first call, see decide_kernel), with the weight Winograd reads where it won.
struct Packed {
  std::shared_ptr<const OneDnnConv> own;
  at::Tensor packed;  // undefined where `own` is set
  bool decided = false;
  at::Tensor winograd;  // the transformed weight where Winograd is fastest, else undefined
  bool direct = false;  // whether the direct kernel is fastest
};

// A packed copy is valid for one weight tensor (held weakly: a freed weight's address may be
// reused by another), its version, one input shape and one geometry.
struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> weight;
  uint32_t version;
  std::vector<int64_t> key;  // see geometry_key
  Packed packed;
};

// Least recently used first. A deployed model holds one entry per layer and input shape; the
// bound keeps a server that sees many batch sizes from keeping every copy. The lookup scans from
// the front, and a forward calls its layers in the order the previous forward moved them to the
// back, so each layer's entry is found first.
constexpr size_t kMaxEntries = 1024;
std::mutex cache_mutex;
std::list<Entry> cache;

// What a call's packed copy depends on besides the weight: the input sizes, stride, padding,
// dilation, groups, the number of threads (oneDNN splits a primitive's work for the threads there
// are when it is made and keeps using that many after torch.set_num_threads; the kernel choice
// was timed on them too), and, where the call can run an own primitive (`own_layout`: built with
// them, and input and output channels_last, the layout it reads and writes), what that primitive is
// made for: the epilogue and whether there is a bias. ATen's packed copy serves every epilogue;
// an entry packed while DEEPREBIRTH_ONEDNN_PRIMITIVES=0 holds one and keeps running it.
struct Layer {
  ConvEpilogue epilogue;
  bool bias;
  bool own_layout;
};

Layer layer_of(ConvEpilogue epilogue, const std::optional<at::Tensor>& b, bool channels_last) {
  return {epilogue, b.has_value() && b->defined(), channels_last && onednn_primitives_built()};
}

std::vector<int64_t> geometry_key(const at::Tensor& x, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups, const Layer& layer) {
  std::vector<int64_t> key(x.sizes().begin(), x.sizes().end());
  for (const c10::IntArrayRef part : {stride, padding, dilation}) {
    key.insert(key.end(), part.begin(), part.end());
  }
  key.insert(key.end(), {groups, at::get_num_threads()});
  if (layer.own_layout) key.insert(key.end(), {static_cast<int64_t>(layer.epilogue), layer.bias});
  return key;
}

Packed packed_weight(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                     int64_t groups, const Layer& layer) {
  const c10::TensorImpl* impl = w.unsafeGetTensorImpl();
  const uint32_t version = w._version();
  std::vector<int64_t> key = geometry_key(x, stride, padding, dilation, groups, layer);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    for (auto it = cache.begin(); it != cache.end();) {
      c10::intrusive_ptr<c10::TensorImpl> held = it->weight.lock();
      if (!held) {  // the weight is gone: so is the use of its copy
        it = cache.erase(it);
        continue;
      }
      if (held.get() == impl && it->key == key) {
        if (it->version == version) {
          cache.splice(cache.end(), cache, it);  // most recently used
          return cache.back().packed;
        }
        it = cache.erase(it);  // made before an in-place update: never valid again
        continue;
      }
      ++it;
    }
  }
  // Packed outside the lock: other layers keep running; two threads may pack the same copy.
  Packed packed;
  if (layer.own_layout) {
    packed.own = make_onednn_conv(x, w, b, stride, padding, dilation, groups, layer.epilogue);
  }
  if (!packed.own) {
    packed.packed = at::mkldnn_reorder_conv2d_weight(w.contiguous().to_mkldnn(), padding, stride,
                                                     dilation, groups, x.sizes());
  }
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.push_back({c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()), version,
                   std::move(key), packed});
  while (cache.size() > kMaxEntries) cache.pop_front();
  return packed;
}

// Records the kernel decision on the entry of (w, x's shape, geometry), if it is still held.
void record_decision(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                     c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                     const Layer& layer, const Packed& decided) {
  const std::vector<int64_t> key = geometry_key(x, stride, padding, dilation, groups, layer);
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (Entry& entry : cache) {
    if (entry.weight.lock().get() == w.unsafeGetTensorImpl() && entry.key == key &&
        entry.version == w._version()) {
      entry.packed = decided;
      return;
    }
  }
}

// A call conv2d accepts. Any other goes to conv2d, whose errors name the argument (oneDNN's
// only say that it could not create a primitive).
bool valid_geometry(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                    int64_t groups) {
  if (w.dim() != 4 || stride.size() != 2 || padding.size() != 2 || dilation.size() != 2 ||
      groups < 1 || w.size(0) < 1 || w.size(0) % groups != 0 || w.size(1) < 1 ||
      x.size(1) != w.size(1) * groups) {
    return false;
  }
  for (int64_t i = 0; i < 2; ++i) {
    if (w.size(2 + i) < 1 || stride[i] < 1 || padding[i] < 0 || dilation[i] < 1 ||
        conv_output_size(x.size(2 + i), w.size(2 + i), stride[i], padding[i], dilation[i]) < 1) {
      return false;
    }
  }
  return !b.has_value() || !b->defined() || (b->dim() == 1 && b->size(0) == w.size(0));
}

}  // namespace

bool onednn_packed_conv_applies(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups) {
  // Real data only: fake and functional tensors (tracing, torch.compile, opcheck) and symbolic
  // sizes have no values to pack or to time a kernel on.
  const auto is_cpu_float = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided &&
           !t.is_mkldnn() && !t.unsafeGetTensorImpl()->has_symbolic_sizes_strides() &&
           !t.key_set().has_any(
               c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
  };
  // Only weights that are not trainable parameters (TorchScript's frozen constants): a parameter
  // may be written through .data, which its version counter does not see. Nor inference tensors
  // (made under torch.inference_mode), which have no version counter.
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && !w.requires_grad() &&
         !w.is_inference() && x.dim() == 4 && is_cpu_float(x) && is_cpu_float(w) && x.numel() > 0 &&
         (!b.has_value() || !b->defined() || is_cpu_float(*b)) &&
         valid_geometry(x, w, b, stride, padding, dilation, groups);
}

namespace {

// oneDNN reads NCHW or channels_last: any other strides become the closer of the two.
at::Tensor dense_input(const at::Tensor& x) {
  const bool dense = x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return dense ? x : x.contiguous(x.suggest_memory_format());
}

// The packed path's output for x: channels_last, as oneDNN writes it whatever x's layout, so that
// which kernel the timing chose never changes the layout the rest of the network runs in.
at::Tensor channels_last_output(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  return at::empty(conv2d_output_shape(x, w, stride, padding, dilation),
                   x.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// oneDNN on x (dense): our own primitive where the layer has one, else ATen's op on its packed
// copy.
at::Tensor onednn_call(const at::Tensor& input, const Packed& packed, const at::Tensor& w,
                       const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       bool relu) {
  if (packed.own) {  // through the dispatcher: profilers, FLOP counters and op plans see the layer
    return onednn_conv2d(input, w, b, stride, padding, dilation, groups, relu);
  }
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                            std::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<std::string_view>)>();
  return op.call(input, packed.packed, b, padding, stride, dilation, groups, relu ? "relu" : "none",
                 c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

at::Tensor winograd_call(const at::Tensor& input, const at::Tensor& transformed,
                         const at::Tensor& w, const std::optional<at::Tensor>& b,
                         c10::IntArrayRef padding, bool relu) {
  at::Tensor out = channels_last_output(input, w, {1, 1}, padding, {1, 1});
  winograd_conv2d_out(input, transformed, b, w.size(0), padding, relu, out);
  return out;
}

at::Tensor direct_call(const at::Tensor& input, const at::Tensor& direct_w, const at::Tensor& w,
                       const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, bool relu) {
  return direct_conv(input, direct_w, b, w.size(0), stride, padding, relu)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

// DEEPREBIRTH_PACKED_WINOGRAD: "0" never, "1" F(2x2, 3x3) wherever it applies, "4" F(4x4, 3x3)
// wherever it applies, otherwise (unset) where one of them measures fastest. Read at each
// decision (once per layer and input shape).
enum class WinogradMode { kNever, kAlways2, kAlways4, kMeasured };

WinogradMode winograd_mode() {
  const char* value = std::getenv("DEEPREBIRTH_PACKED_WINOGRAD");
  if (value != nullptr && std::strcmp(value, "0") == 0) return WinogradMode::kNever;
  if (value != nullptr && std::strcmp(value, "1") == 0) return WinogradMode::kAlways2;
  if (value != nullptr && std::strcmp(value, "4") == 0) return WinogradMode::kAlways4;
  return WinogradMode::kMeasured;
}

// The Winograd output tiles a decision in `mode` considers: F(2x2, 3x3) and F(4x4, 3x3) when
// measured. F(4x4) does 1.78x fewer multiply-adds than F(2x2) on whole tiles, but its transformed
// weight is 2.25x larger and read once per chunk of input, and 4x4 tiles waste more of a 7x7 or
// 14x14 image: it won 28x28 and 56x56 layers at batch 8 and lost most of them at batch 1
// (docs/kernels.md, "Winograd F(4x4, 3x3)").
std::vector<int64_t> winograd_tiles(WinogradMode mode) {
  switch (mode) {
    case WinogradMode::kNever:
      return {};
    case WinogradMode::kAlways2:
      return {2};
    case WinogradMode::kAlways4:
      return {4};
    default:
      return {2, 4};
  }
}

// DEEPREBIRTH_PACKED_TIMING: "warm" times the candidate kernels with their weights where the
// previous call left them (in cache), otherwise (unset, "cold") evicted from every cache first, as
// in a model whose weights do not all fit in the last-level cache. Read at each decision.
bool cold_weight_timing() {
  const char* value = std::getenv("DEEPREBIRTH_PACKED_TIMING");
  return value == nullptr || std::strcmp(value, "warm") != 0;
}

// A candidate kernel of a layer: its call, and the eviction of the weight copy it reads.
struct Candidate {
  std::function<void()> call;
  std::function<void()> evict;
};

// Evicting a tensor weight copy from the caches (a oneDNN copy of our own:
// evict_onednn_conv_weight).
std::function<void()> evicting(const at::Tensor& weight) {
  return [weight] { evict_from_caches(weight); };
}

// The index of the fastest of `candidates`, each timed `rounds` times in turns after one untimed
// call each (the first call of a shape allocates); ties go to the earlier one. With `cold`, each
// timed call reads its weight from memory (evict_from_caches first, outside the timing), as in a
// forward of a model whose weights outgrow the last-level cache: timed on cached weights,
// Winograd (whose transformed weight is 16/9 of the original) won layers at 7x7 that then ran
// slower in the model than oneDNN (docs/kernels.md).
size_t fastest_of(int rounds, const std::vector<Candidate>& candidates, bool cold) {
  using clock = std::chrono::steady_clock;
  for (const auto& candidate : candidates) candidate.call();
  std::vector<double> best(candidates.size(), 1e30);
  for (int i = 0; i < rounds; ++i) {
    for (size_t k = 0; k < candidates.size(); ++k) {
      if (cold) candidates[k].evict();
      const auto start = clock::now();
      candidates[k].call();
      best[k] = std::min(best[k], std::chrono::duration<double>(clock::now() - start).count());
    }
  }
  return std::min_element(best.begin(), best.end()) - best.begin();
}

// The kernel this layer runs for inputs shaped like x, decided on its first call: the fastest on
// this CPU for this shape of oneDNN, Winograd F(2x2, 3x3) and F(4x4, 3x3) (where they apply)
// and the direct kernel (where direct_w is given), each timed three times on x. Which one wins
// depends on the CPU, the layout and the layer: Winograd's speed-up over oneDNN ranged 0.6-1.9x
// over the 3x3 layers of GoogLeNet-Slim and ResNet-50 on one CPU, and the direct kernel, faster
// than oneDNN on some small NCHW layers, ran the same layers 1.3-2.6x slower than oneDNN in
// channels_last (docs/kernels.md). All compute the same convolution, within rounding. The timed
// calls bypass Python's dispatch modes, so that FLOP counters see the layer's work once.
Packed decide_kernel(const at::Tensor& input, const at::Tensor& w,
                     const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                     c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                     const Layer& layer, const at::Tensor& direct_w, Packed packed) {
  const bool relu = layer.epilogue == ConvEpilogue::kRelu;
  packed.decided = true;
  const WinogradMode mode = winograd_mode();
  // Winograd's transformed weights, one per output tile considered
  std::vector<at::Tensor> transformed;
  if (winograd_conv_applies(input, w, stride, dilation, groups)) {
    for (const int64_t tile : winograd_tiles(mode)) {
      at::Tensor t = winograd_pack_if_finite(w, tile);
      if (t.defined()) transformed.push_back(t);
    }
  }
  if (!transformed.empty() && mode != WinogradMode::kMeasured) {
    packed.winograd = transformed.front();
  } else if (!transformed.empty() || direct_w.defined()) {
    const c10::impl::ExcludeDispatchKeyGuard no_python(
        c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
    // oneDNN and the direct kernel read a dense input, Winograd any strides: each is timed
    // with the copy it needs
    const std::function<void()> evict_onednn =
        packed.own ? std::function<void()>([&] { evict_onednn_conv_weight(*packed.own); })
                   : evicting(packed.packed);
    std::vector<Candidate> candidates{{[&] {
                                         onednn_call(dense_input(input), packed, w, b, stride,
                                                     padding, dilation, groups, relu);
                                       },
                                       evict_onednn}};
    for (const at::Tensor& t : transformed) {
      candidates.push_back({[&] { winograd_call(input, t, w, b, padding, relu); }, evicting(t)});
    }
    if (direct_w.defined()) {
      candidates.push_back(
          {[&] { direct_call(dense_input(input), direct_w, w, b, stride, padding, relu); },
           evicting(direct_w)});
    }
    // candidates: oneDNN, then each transformed weight, then the direct kernel
    const size_t fastest = fastest_of(3, candidates, cold_weight_timing());
    const bool winograd = fastest >= 1 && fastest <= transformed.size();
    packed.winograd = winograd ? transformed[fastest - 1] : at::Tensor();
    packed.direct = fastest == transformed.size() + 1 && direct_w.defined();
  }
  record_decision(input, w, stride, padding, dilation, groups, layer, packed);
  return packed;
}

// A call's input (as given: Winograd reads any strides, the other kernels a dense copy) and packed
// copies (the kernel decided), and whether it runs Winograd
// (decided fastest for this shape, and the input finite) or the direct kernel.
struct PackedCall {
  at::Tensor input;
  Packed packed;
  bool winograd;
};

// Whether dense_input(x) is channels_last, the layout our own primitives read.
bool dense_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) ||
         (!x.is_contiguous() && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
}

// Whether a call on x may run an own primitive, which reads channels_last only: x is read as
// channels_last (dense_channels_last), or this build runs its own primitives, which then read a
// channels_last copy of x (own_input). The packed path writes channels_last whatever it reads
// (channels_last_output), so in a network only the first layer sees NCHW; ATen's oneDNN op, which
// ran it before, made the same copy inside and built its primitive again on every call
// (GoogLeNet-Slim's stem, docs/kernels.md).
bool own_layout_input(const at::Tensor& x) {
  return dense_channels_last(x) || onednn_primitives_available();
}

// The channels_last tensor an own primitive reads for x. Made inside the operator that runs the
// primitive (deeprebirth::onednn_conv2d), so that an op plan records the copy as part of that
// call rather than as a buffer filled outside the dispatcher.
at::Tensor own_input(const at::Tensor& x) {
  return dense_channels_last(x) ? dense_input(x) : channels_last_copy(x);
}

PackedCall packed_call(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                       int64_t groups, bool relu, const at::Tensor& direct_w) {
  PackedCall call{x, Packed{}, false};
  const Layer layer =
      layer_of(relu ? ConvEpilogue::kRelu : ConvEpilogue::kNone, b, own_layout_input(x));
  call.packed = packed_weight(call.input, w, b, stride, padding, dilation, groups, layer);
  if (!call.packed.decided) {
    call.packed = decide_kernel(call.input, w, b, stride, padding, dilation, groups, layer,
                                direct_w, call.packed);
  }
  call.winograd = call.packed.winograd.defined() && winograd_input_finite(call.input);
  return call;
}

}  // namespace

at::Tensor onednn_packed_conv2d(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                bool relu, const at::Tensor& direct_w) {
  const PackedCall call = packed_call(x, w, b, stride, padding, dilation, groups, relu, direct_w);
  if (call.winograd) {
    return winograd_call(call.input, call.packed.winograd, w, b, padding, relu);
  }
  const at::Tensor dense = dense_input(call.input);
  if (call.packed.direct && direct_w.defined()) {  // a later caller may rule the direct kernel out
    return direct_call(dense, direct_w, w, b, stride, padding, relu);
  }
  return onednn_call(dense, call.packed, w, b, stride, padding, dilation, groups, relu);
}

void onednn_packed_conv2d_into(at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               bool relu, const at::Tensor& direct_w) {
  const PackedCall call = packed_call(x, w, b, stride, padding, dilation, groups, relu, direct_w);
  if (call.winograd) {
    winograd_conv2d_out(call.input, call.packed.winograd, b, w.size(0), padding, relu, out);
  } else if (call.packed.direct && direct_w.defined()) {
    out.copy_(direct_conv(dense_input(call.input), direct_w, b, w.size(0), stride, padding, relu));
  } else if (call.packed.own && out.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    onednn_conv2d_out(dense_input(call.input), w, b, stride, padding, dilation, groups, relu, out);
  } else {
    out.copy_(onednn_call(dense_input(call.input), call.packed, w, b, stride, padding, dilation,
                          groups, relu));
  }
}

at::Tensor& onednn_packed_conv2d_add_(at::Tensor& residual, const at::Tensor& x,
                                      const at::Tensor& w, const std::optional<at::Tensor>& b,
                                      c10::IntArrayRef stride, c10::IntArrayRef padding,
                                      c10::IntArrayRef dilation, int64_t groups, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary")
          .typed<at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef,
                             c10::IntArrayRef, int64_t, std::string_view, std::optional<at::Scalar>,
                             std::optional<std::string_view>, c10::List<std::optional<at::Scalar>>,
                             std::optional<std::string_view>)>();
  const at::Tensor input = dense_input(x);
  const Layer layer = layer_of(relu ? ConvEpilogue::kAddRelu : ConvEpilogue::kAdd, b,
                               input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                                   residual.is_contiguous(at::MemoryFormat::ChannelsLast));
  const Packed packed = packed_weight(input, w, b, stride, padding, dilation, groups, layer);
  if (packed.own) {
    return onednn_conv2d_add_(residual, input, w, b, stride, padding, dilation, groups, relu);
  }
  return op.call(residual, input, packed.packed, b, padding, stride, dilation, groups, "add", 1.0,
                 relu ? std::optional<std::string_view>("relu") : std::nullopt,
                 c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

namespace {

// The kernels of the deeprebirth::onednn_conv2d ops: the layer's own primitive (made on the first
// call for this weight, input shape and epilogue; see packed_weight) run into `out`, or, where
// there is none (unavailable, or not channels_last in and out), ATen's oneDNN op on its packed
// copy, and conv2d for a call the packed path does not take.
void onednn_conv2d_into(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                        ConvEpilogue epilogue, at::Tensor& out) {
  const bool add = epilogue == ConvEpilogue::kAdd || epilogue == ConvEpilogue::kAddRelu;
  const bool relu = epilogue == ConvEpilogue::kRelu || epilogue == ConvEpilogue::kAddRelu;
  if (onednn_packed_conv_applies(x, w, b, stride, padding, dilation, groups)) {
    const Layer layer = layer_of(
        epilogue, b, own_layout_input(x) && out.is_contiguous(at::MemoryFormat::ChannelsLast));
    const Packed packed = packed_weight(x, w, b, stride, padding, dilation, groups, layer);
    if (packed.own) {
      run_onednn_conv(*packed.own, own_input(x), b, out);
      return;
    }
  }
  at::Tensor y = at::conv2d(x, w, b, stride, padding, dilation, groups);
  if (add) y.add_(out);
  if (relu) y.relu_();
  out.copy_(y);
}

// Arguments conv2d takes; an `out` (where given) of its output's shape, dtype and device.
void check_onednn_args(const char* op, const at::Tensor& x, const at::Tensor& w,
                       const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const at::Tensor* out = nullptr) {
  TORCH_CHECK(
      x.dim() == 4 && w.dim() == 4 && stride.size() == 2 && padding.size() == 2 &&
          dilation.size() == 2 && valid_geometry(x, w, b, stride, padding, dilation, groups),
      op, ": arguments conv2d does not take: input ", x.sizes(), ", weight ", w.sizes(),
      ", stride ", stride, ", padding ", padding, ", dilation ", dilation, ", groups ", groups);
  if (out == nullptr) return;
  const std::vector<int64_t> size = conv2d_output_shape(x, w, stride, padding, dilation);
  TORCH_CHECK(out->sizes() == c10::IntArrayRef(size), op, ": expected out of shape ",
              c10::IntArrayRef(size), ", but got ", out->sizes());
  TORCH_CHECK(out->scalar_type() == x.scalar_type() && out->device() == x.device(), op,
              ": expected out of the input's dtype and device");
}

at::Tensor onednn_conv2d_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                             bool relu) {
  check_onednn_args("onednn_conv2d", x, w, b, stride, padding, dilation, groups);
  at::Tensor out = channels_last_output(x, w, stride, padding, dilation);
  onednn_conv2d_into(x, w, b, stride, padding, dilation, groups,
                     relu ? ConvEpilogue::kRelu : ConvEpilogue::kNone, out);
  return out;
}

at::Tensor& onednn_conv2d_out_cpu(const at::Tensor& x, const at::Tensor& w,
                                  const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups, bool relu, at::Tensor& out) {
  check_onednn_args("onednn_conv2d.out", x, w, b, stride, padding, dilation, groups, &out);
  onednn_conv2d_into(x, w, b, stride, padding, dilation, groups,
                     relu ? ConvEpilogue::kRelu : ConvEpilogue::kNone, out);
  return out;
}

at::Tensor& onednn_conv2d_add_cpu(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                                  const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups, bool relu) {
  check_onednn_args("onednn_conv2d_add_", x, w, b, stride, padding, dilation, groups, &residual);
  onednn_conv2d_into(x, w, b, stride, padding, dilation, groups,
                     relu ? ConvEpilogue::kAddRelu : ConvEpilogue::kAdd, residual);
  return residual;
}

}  // namespace

at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         bool relu) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("deeprebirth::onednn_conv2d", "")
                             .typed<decltype(onednn_conv2d)>();
  return op.call(x, w, b, stride, padding, dilation, groups, relu);
}

at::Tensor& onednn_conv2d_out(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                              bool relu, at::Tensor& out) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("deeprebirth::onednn_conv2d", "out")
                             .typed<decltype(onednn_conv2d_out)>();
  return op.call(x, w, b, stride, padding, dilation, groups, relu, out);
}

at::Tensor& onednn_conv2d_add_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               bool relu) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("deeprebirth::onednn_conv2d_add_", "")
                             .typed<decltype(onednn_conv2d_add_)>();
  return op.call(residual, x, w, b, stride, padding, dilation, groups, relu);
}

TORCH_LIBRARY_FRAGMENT(deeprebirth, m) {
  m.def(
      "onednn_conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool relu) -> Tensor");
  m.def(
      "onednn_conv2d.out(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool relu, *, Tensor(a!) out) -> Tensor(a!)");
  m.def(
      "onednn_conv2d_add_(Tensor(a!) residual, Tensor x, Tensor w, Tensor? b, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool relu) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(deeprebirth, CPU, m) {
  m.impl("onednn_conv2d", &onednn_conv2d_cpu);
  m.impl("onednn_conv2d.out", &onednn_conv2d_out_cpu);
  m.impl("onednn_conv2d_add_", &onednn_conv2d_add_cpu);
}

size_t onednn_packed_weight_count() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.size();
}

void clear_onednn_packed_weights() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.clear();
}

}  // namespace deeprebirth::ops
