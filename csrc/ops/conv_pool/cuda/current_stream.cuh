// PyTorch's current CUDA stream, on which the conv_pool kernels launch.
//
// With a CUDA build of torch (the only one where these kernels run) this is
// c10::cuda::getCurrentCUDAStream(). The compile-only check against this project's CPU torch
// (scripts/check_cuda_compiles.sh) has no c10 CUDA headers; there the legacy default stream
// stands in so that the kernel code still compiles.
#pragma once

#include <cuda_runtime_api.h>

#if __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAStream.h>
namespace deeprebirth::ops {
inline cudaStream_t current_cuda_stream() { return c10::cuda::getCurrentCUDAStream(); }
}  // namespace deeprebirth::ops
#else
namespace deeprebirth::ops {
inline cudaStream_t current_cuda_stream() { return nullptr; }
}  // namespace deeprebirth::ops
#endif
