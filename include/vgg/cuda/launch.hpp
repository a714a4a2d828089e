#pragma once
// Runs an element-wise functor of ops.hpp over its index space on a stream.

#include <cuda_runtime.h>

#include <algorithm>

#include "vgg/cuda/check.hpp"

namespace vgg::cuda {

namespace detail {
template <class Op>
__global__ void for_each_index(Op op) {
  const long count = op.count();
  const long stride = long(gridDim.x) * blockDim.x;
  for (long i = long(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) op(i);
}
}  // namespace detail

/// op(i) for every i in [0, op.count()), asynchronously on `stream`.
template <class Op>
void launch(cudaStream_t stream, const Op& op, const char* what) {
  const long count = op.count();
  if (count <= 0) return;
  constexpr int threads = 256;
  // A grid-stride loop: enough blocks to fill any current GPU, few enough to keep launches cheap.
  const long blocks = std::min<long>((count + threads - 1) / threads, 65536);
  detail::for_each_index<<<unsigned(blocks), threads, 0, stream>>>(op);
  VGG_CUDA_CHECK_LAUNCH(what);
}

}  // namespace vgg::cuda
