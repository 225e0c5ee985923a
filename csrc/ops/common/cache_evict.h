// Evicting a buffer from the CPU's caches, so that the next read of it comes from memory.
//
// A deployed model reads each layer's weight once per forward, after the other layers' weights
// and activations went through the caches; when they add up to more than the last-level cache,
// the weight arrives from memory. The packed convolution's first call times its candidate
// kernels on weights evicted this way, so that a kernel reading a larger weight copy (Winograd's
// transformed weight is 16/9 of the original) pays for those bytes as it does in the model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace deeprebirth::ops {

// Writes back and evicts every cache line of [data, data + bytes) from every cache level, and
// waits until that is done. x86-64: clflush; elsewhere nothing (returns false).
bool evict_from_caches(const void* data, size_t bytes);

// evict_from_caches over t's storage: a dense tensor's bytes, or the opaque buffer of a oneDNN
// (MKLDNN layout) tensor. Undefined tensors are skipped.
bool evict_from_caches(const at::Tensor& t);

}  // namespace deeprebirth::ops
