// Packed-weight oneDNN convolution with a process-wide cache (see onednn_packed_conv.h).
#include "ops/direct_conv/cpu/onednn_packed_conv.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <list>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include "ops/common/arg_checks.h"

namespace deeprebirth::ops {

namespace {

// A packed copy is valid for one weight tensor (held weakly: a freed weight's address may be
// reused by another), its version, one input shape and one geometry.
struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> weight;
  uint32_t version;
  std::vector<int64_t> key;  // input sizes, stride, padding, dilation, groups
  at::Tensor packed;
};

// Least recently used first. A deployed model holds one entry per layer and input shape; the
// bound keeps a server that sees many batch sizes from keeping every copy. The lookup scans from
// the front, and a forward calls its layers in the order the previous forward moved them to the
// back, so each layer's entry is found first.
constexpr size_t kMaxEntries = 1024;
std::mutex cache_mutex;
std::list<Entry> cache;

std::vector<int64_t> geometry_key(const at::Tensor& x, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups) {
  std::vector<int64_t> key(x.sizes().begin(), x.sizes().end());
  for (const c10::IntArrayRef part : {stride, padding, dilation}) {
    key.insert(key.end(), part.begin(), part.end());
  }
  key.push_back(groups);
  return key;
}

at::Tensor packed_weight(const at::Tensor& x, const at::Tensor& w, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const c10::TensorImpl* impl = w.unsafeGetTensorImpl();
  const uint32_t version = w._version();
  std::vector<int64_t> key = geometry_key(x, stride, padding, dilation, groups);
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
  at::Tensor packed = at::mkldnn_reorder_conv2d_weight(w.contiguous().to_mkldnn(), padding, stride,
                                                       dilation, groups, x.sizes());
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.push_back({c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()), version,
                   std::move(key), packed});
  while (cache.size() > kMaxEntries) cache.pop_front();
  return packed;
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
  const auto is_cpu_float = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided &&
           !t.is_mkldnn();
  };
  // Only weights that are not trainable parameters (TorchScript's frozen constants): a parameter
  // may be written through .data, which its version counter does not see.
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && !w.requires_grad() &&
         x.dim() == 4 && x.numel() > 0 && is_cpu_float(x) && is_cpu_float(w) &&
         (!b.has_value() || !b->defined() || is_cpu_float(*b)) &&
         valid_geometry(x, w, b, stride, padding, dilation, groups);
}

namespace {

// oneDNN reads NCHW or channels_last: any other strides become the closer of the two.
at::Tensor dense_input(const at::Tensor& x) {
  const bool dense = x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return dense ? x : x.contiguous(x.suggest_memory_format());
}

}  // namespace

at::Tensor onednn_packed_conv2d(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                            std::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<std::string_view>)>();
  const at::Tensor input = dense_input(x);
  const at::Tensor packed = packed_weight(input, w, stride, padding, dilation, groups);
  return op.call(input, packed, b, padding, stride, dilation, groups, relu ? "relu" : "none",
                 c10::List<std::optional<at::Scalar>>(), std::nullopt);
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
  const at::Tensor packed = packed_weight(input, w, stride, padding, dilation, groups);
  return op.call(residual, input, packed, b, padding, stride, dilation, groups, "add", 1.0,
                 relu ? std::optional<std::string_view>("relu") : std::nullopt,
                 c10::List<std::optional<at::Scalar>>(), std::nullopt);
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
