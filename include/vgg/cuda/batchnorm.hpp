#pragma once
// The batch-norm kernels of the CUDA backend. A channel's reductions (its batch statistics, its
// gradient sums) run as one thread block per channel, each thread summing a strided share of the
// channel's batch x plane values in double, then a tree in shared memory; the per-value terms and
// the per-channel finish are the functors of ops.hpp (the host tests run them serially). The
// element-wise steps go through launch().

#include <cuda_runtime.h>

#include "vgg/backend.hpp"
#include "vgg/cuda/check.hpp"
#include "vgg/cuda/launch.hpp"
#include "vgg/cuda/ops.hpp"

namespace vgg::cuda {

namespace detail {

inline constexpr int kChannelThreads = 256;

/// The sum of every thread's v in the block (valid in thread 0); `scratch` holds kChannelThreads.
__device__ inline double block_sum(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kChannelThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();  // the scratch may be reused at once
  return total;
}

/// Block c: BatchNormStatistics for channel c, two passes (mean, then squared deviations).
/// (Kernels are templates, over the functor, so that several .cu files of one program may include this.)
template <class Op>
__global__ void __launch_bounds__(kChannelThreads) batchnorm_statistics(Op op) {
  __shared__ double scratch[kChannelThreads];
  const int c = int(blockIdx.x);
  const long values = op.values();
  double sum = 0.0;
  for (long j = threadIdx.x; j < values; j += kChannelThreads) sum += double(op.value(c, j));
  const float mean = elementwise::batchnorm_mean(block_sum(sum, scratch), values);
  double squares = 0.0;
  for (long j = threadIdx.x; j < values; j += kChannelThreads) squares += double(op.deviation(c, j, mean));
  squares = block_sum(squares, scratch);
  if (threadIdx.x == 0) op.finish(c, mean, squares);
}

/// Block c: BatchNormGradientSums for channel c.
template <class Op>
__global__ void __launch_bounds__(kChannelThreads) batchnorm_gradient_sums(Op op) {
  __shared__ double scratch[kChannelThreads];
  const int c = int(blockIdx.x);
  const long values = op.values();
  double sum = 0.0, dot = 0.0;
  for (long j = threadIdx.x; j < values; j += kChannelThreads) op.contribution(c, j, sum, dot);
  sum = block_sum(sum, scratch);
  dot = block_sum(dot, scratch);
  if (threadIdx.x == 0) op.finish(c, sum, dot);
}

}  // namespace detail

/// Training forward: batch statistics (and the running ones), then y = relu(bn(z)).
inline void batchnorm_relu_forward(cudaStream_t stream, const BatchNormShape& s, const float* z,
                                   const BatchNormTensors& t, float* y, int n) {
  if (n < 1 || s.channels < 1) return;
  detail::batchnorm_statistics<<<unsigned(s.channels), detail::kChannelThreads, 0, stream>>>(
      ops::BatchNormStatistics{z, n, s.channels, s.plane, t, s.momentum, s.eps});
  VGG_CUDA_CHECK_LAUNCH("vgg::cuda batch-norm statistics");
  launch(stream, ops::BatchNormRelu{z, y, long(n) * s.channels * s.plane, s.plane, s.channels, t},
         "vgg::cuda batch norm + ReLU");
}

/// Training backward: gamma's and beta's gradients, then dz (may be dy).
inline void batchnorm_relu_backward(cudaStream_t stream, const BatchNormShape& s, const float* z, const float* y,
                                    const float* dy, const BatchNormTensors& t, float* dz, float* weight_grad,
                                    float* bias_grad, int n) {
  if (n < 1 || s.channels < 1) return;
  detail::batchnorm_gradient_sums<<<unsigned(s.channels), detail::kChannelThreads, 0, stream>>>(
      ops::BatchNormGradientSums{z, y, dy, n, s.channels, s.plane, t, weight_grad, bias_grad});
  VGG_CUDA_CHECK_LAUNCH("vgg::cuda batch-norm gradient sums");
  launch(stream,
         ops::BatchNormInputGradient{z, y, dy, dz, long(n) * s.channels * s.plane, s.plane, s.channels, t,
                                     weight_grad, bias_grad},
         "vgg::cuda batch-norm input gradient");
}

inline void batchnorm_fold(cudaStream_t stream, const BatchNormShape& s, const float* weight, const float* bias,
                           long fan_in, const BatchNormTensors& t, float* folded_weight, float* folded_bias) {
  launch(stream, ops::BatchNormFoldWeights{weight, folded_weight, fan_in, s.channels, t, s.eps},
         "vgg::cuda batch-norm fold (weights)");
  launch(stream, ops::BatchNormFoldBias{bias, folded_bias, s.channels, t, s.eps}, "vgg::cuda batch-norm fold (bias)");
}

/// The per-channel gradients first: they read the folded weight gradient, which the second kernel
/// may overwrite (in place).
inline void batchnorm_fold_backward(cudaStream_t stream, const BatchNormShape& s, const float* weight,
                                    const float* bias, long fan_in, const BatchNormTensors& t,
                                    const float* folded_weight_grad, const float* folded_bias_grad,
                                    float* weight_grad, float* bias_grad, float* gamma_grad, float* beta_grad) {
  launch(stream,
         ops::BatchNormUnfoldChannelGradients{weight, bias, folded_weight_grad, folded_bias_grad, bias_grad,
                                              gamma_grad, beta_grad, fan_in, s.channels, t, s.eps},
         "vgg::cuda batch-norm unfold (channel gradients)");
  launch(stream, ops::BatchNormUnfoldWeightGradients{folded_weight_grad, weight_grad, fan_in, s.channels, t, s.eps},
         "vgg::cuda batch-norm unfold (weight gradient)");
}

}  // namespace vgg::cuda
