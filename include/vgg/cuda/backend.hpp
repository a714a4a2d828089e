#pragma once
// The CUDA backend: device memory, one stream with cuDNN and cuBLAS handles (context.hpp), cuDNN
// convolutions (conv.hpp), cuBLAS linear layers, and the element-wise kernels of ops.hpp. A CUDA
// network is vgg::Vgg<...>::on<vgg::cuda::Backend>; batches, labels and logits cross its API on the
// host, everything else stays on the device.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>

#include "vgg/backend.hpp"
#include "vgg/cuda/batchnorm.hpp"
#include "vgg/cuda/check.hpp"
#include "vgg/cuda/context.hpp"
#include "vgg/cuda/conv.hpp"
#include "vgg/cuda/launch.hpp"
#include "vgg/cuda/memory.hpp"
#include "vgg/cuda/ops.hpp"
#include "vgg/cuda/staging.hpp"
#include "vgg/loss.hpp"

namespace vgg::cuda {

struct Backend {
  static constexpr Device device = Device::cuda;
  static constexpr bool host_memory = false;
  static constexpr const char* name() { return "cuda (cuDNN + cuBLAS)"; }

  template <class T>
  using Buffer = cuda::Buffer<T>;
  using Context = cuda::Context;
  using ConvWorkspace = cuda::ConvWorkspace;
  using PoolState = cuda::PoolState;
  /// Pinned, double-buffered batch uploads on a copy stream (staging.hpp).
  using BatchStager = BatchStaging<StagingTransport>;

  /// cuBLAS needs nothing per layer: its workspace is the handle's.
  class LinearWorkspace {
   public:
    void reserve(Context&, int, int, int) {}
    void reserve_backward(Context&, int, int, int) {}
  };

  /// Device to host; returns when the host copy is complete (it waits for the work queued before).
  static void copy_to_host(const float* src, float* dst, std::size_t count, Context& ctx) {
    if (!count) return;
    VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();
  }
  /// Host to device, in stream order; the host source may be reused as soon as this returns (the
  /// runtime stages pageable memory before returning).
  static void copy_from_host(const float* src, float* dst, std::size_t count, Context& ctx) {
    if (!count) return;
    VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyHostToDevice, ctx.stream()));
  }

  // ---- kernels: one set of signatures for every backend (backend.hpp) ----

  static void conv3x3_relu_forward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                                   const float* weight, const float* bias, float* y, int n) {
    ws.forward(ctx, s, x, weight, bias, y, n);
  }
  /// The conv's full output is kept in the pool state (the pool's backward needs its winners).
  static void conv3x3_relu_pool_forward(Context& ctx, ConvWorkspace& ws, PoolState& state, const ConvShape& s,
                                        const float* x, const float* weight, const float* bias, float* pooled, int n) {
    ws.forward(ctx, s, x, weight, bias, state.output(), n);
    launch(ctx.stream(), ops::MaxPoolForward{state.output(), pooled, long(n) * s.cout, s.h, s.w},
           "vgg::cuda max-pool forward");
  }
  static void conv3x3_relu_backward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                                    const float* weight, const float* y, float* dy, float* dx, float* weight_grad,
                                    float* bias_grad, int n) {
    launch(ctx.stream(), ops::ReluBackward{y, dy, long(n) * s.cout * s.h * s.w}, "vgg::cuda ReLU backward");
    ws.backward_products(ctx, s, x, weight, dy, dx, weight_grad, bias_grad, n);
  }
  static void conv3x3_relu_pool_backward(Context& ctx, ConvWorkspace& ws, const PoolState& state, const ConvShape& s,
                                         const float* x, const float* weight, const float* dy_pooled, float* dx,
                                         float* weight_grad, float* bias_grad, int n) {
    float* dz = ws.output_gradient();
    launch(ctx.stream(), ops::MaxPoolBackward{state.output(), dy_pooled, dz, long(n) * s.cout, s.h, s.w, true},
           "vgg::cuda max-pool + ReLU backward");
    ws.backward_products(ctx, s, x, weight, dz, dx, weight_grad, bias_grad, n);
  }

  static void conv3x3_forward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x, const float* weight,
                              const float* bias, float* y, int n) {
    ws.forward(ctx, s, x, weight, bias, y, n, /*relu=*/false);
  }
  static void conv3x3_backward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                               const float* weight, float* dz, float* dx, float* weight_grad, float* bias_grad, int n) {
    ws.backward_products(ctx, s, x, weight, dz, dx, weight_grad, bias_grad, n);
  }

  static void batchnorm_relu_forward(Context& ctx, const BatchNormShape& s, const float* z, const BatchNormTensors& t,
                                     float* y, int n) {
    cuda::batchnorm_relu_forward(ctx.stream(), s, z, t, y, n);
  }
  static void batchnorm_relu_backward(Context& ctx, const BatchNormShape& s, const float* z, const float* y,
                                      const float* dy, const BatchNormTensors& t, float* dz, float* weight_grad,
                                      float* bias_grad, int n) {
    cuda::batchnorm_relu_backward(ctx.stream(), s, z, y, dy, t, dz, weight_grad, bias_grad, n);
  }
  static void batchnorm_fold(Context& ctx, const BatchNormShape& s, const float* weight, const float* bias,
                             long fan_in, const BatchNormTensors& t, float* folded_weight, float* folded_bias) {
    cuda::batchnorm_fold(ctx.stream(), s, weight, bias, fan_in, t, folded_weight, folded_bias);
  }
  static void batchnorm_fold_backward(Context& ctx, const BatchNormShape& s, const float* weight, const float* bias,
                                      long fan_in, const BatchNormTensors& t, const float* folded_weight_grad,
                                      const float* folded_bias_grad, float* weight_grad, float* bias_grad,
                                      float* gamma_grad, float* beta_grad) {
    cuda::batchnorm_fold_backward(ctx.stream(), s, weight, bias, fan_in, t, folded_weight_grad, folded_bias_grad,
                                  weight_grad, bias_grad, gamma_grad, beta_grad);
  }

  static void maxpool2x2_forward(Context& ctx, const float* x, float* y, long planes, int h, int w) {
    launch(ctx.stream(), ops::MaxPoolForward{x, y, planes, h, w}, "vgg::cuda max-pool forward");
  }
  static void maxpool2x2_backward(Context& ctx, const float* x, const float* dy, float* dx, long planes, int h, int w) {
    launch(ctx.stream(), ops::MaxPoolBackward{x, dy, dx, planes, h, w, false}, "vgg::cuda max-pool backward");
  }

  static void adaptive_avgpool_forward(Context& ctx, const float* x, float* y, long planes, int h, int w, int oh,
                                       int ow) {
    launch(ctx.stream(), ops::AdaptiveAvgPoolForward{x, y, planes, h, w, oh, ow}, "vgg::cuda adaptive avg-pool forward");
  }
  static void adaptive_avgpool_backward(Context& ctx, const float* dy, float* dx, long planes, int h, int w, int oh,
                                        int ow) {
    launch(ctx.stream(), ops::AdaptiveAvgPoolBackward{dy, dx, planes, h, w, oh, ow},
           "vgg::cuda adaptive avg-pool backward");
  }

  /// y = x W^T + b (x: n x in, W: out x in as PyTorch stores it, y: n x out), then ReLU.
  static void linear_forward(Context& ctx, LinearWorkspace&, const float* x, const float* weight, const float* bias,
                             float* y, int n, int in, int out, bool relu) {
    gemm(ctx, ops::linear_forward_gemm(x, weight, y, n, in, out));
    launch(ctx.stream(), ops::BiasRelu{y, bias, long(n) * out, 1, out, relu}, "vgg::cuda linear bias + ReLU");
  }
  /// dz = dy behind the ReLU (in place); dW = dz^T x; db = column sums of dz; dx = dz W unless null.
  static void linear_backward(Context& ctx, LinearWorkspace&, const float* x, const float* weight, const float* y,
                              float* dy, float* dx, float* weight_grad, float* bias_grad, int n, int in, int out,
                              bool relu) {
    if (relu) launch(ctx.stream(), ops::ReluBackward{y, dy, long(n) * out}, "vgg::cuda ReLU backward");
    gemm(ctx, ops::linear_weight_grad_gemm(x, dy, weight_grad, n, in, out));
    launch(ctx.stream(), ops::LinearBiasGrad{dy, bias_grad, n, out}, "vgg::cuda linear bias gradient");
    if (dx) gemm(ctx, ops::linear_input_grad_gemm(weight, dy, dx, n, in, out));
  }

  static void dropout_forward(Context& ctx, const float* x, float* y, long count, float p, std::uint64_t seed,
                              std::uint64_t stream) {
    const float scale = 1.0f / (1.0f - p);  // as the CPU computes it: bit-equal outputs
    launch(ctx.stream(), ops::Dropout{x, y, count, p, scale, seed, stream}, "vgg::cuda dropout forward");
  }
  static void dropout_backward(Context& ctx, const float* dy, float* dx, long count, float p, std::uint64_t seed,
                               std::uint64_t stream) {
    const float scale = 1.0f / (1.0f - p);
    launch(ctx.stream(), ops::Dropout{dy, dx, count, p, scale, seed, stream}, "vgg::cuda dropout backward");
  }

  /// requires: labels in [0, classes) (else std::invalid_argument, checked on the host before any
  /// device work); grad null or n x classes floats on the device. The per-sample losses come back
  /// to the host and are summed there in sample order, as the CPU does.
  static LossResult softmax_cross_entropy(Context& ctx, const float* logits, std::span<const std::int32_t> labels,
                                          int classes, float* grad) {
    const std::size_t n = labels.size();
    if (classes < 1 || n == 0)
      throw std::invalid_argument("vgg::cuda::Backend::softmax_cross_entropy: " + std::to_string(n) + " labels and " +
                                  std::to_string(classes) + " classes");
    for (std::size_t i = 0; i < n; ++i)
      if (labels[i] < 0 || labels[i] >= classes)
        throw std::invalid_argument("vgg::softmax_cross_entropy: sample " + std::to_string(i) + " has label " +
                                    std::to_string(labels[i]) + ", expected 0.." + std::to_string(classes - 1));
    for_batch(int(n), [] { return std::string("the loss's per-sample buffers"); }, [&] {
      ctx.labels().reserve(n);
      ctx.sample_loss().reserve(n);
      ctx.sample_correct().reserve(n);
    });
    if (ctx.host_loss().size() < n) {
      ctx.host_loss().resize(n);
      ctx.host_correct().resize(n);
    }
    VGG_CUDA_CHECK(cudaMemcpyAsync(ctx.labels().data(), labels.data(), n * sizeof(std::int32_t),
                                   cudaMemcpyHostToDevice, ctx.stream()));
    launch(ctx.stream(),
           ops::SoftmaxCrossEntropy{logits, ctx.labels().data(), grad, ctx.sample_loss().data(),
                                    ctx.sample_correct().data(), int(n), classes},
           "vgg::cuda softmax cross-entropy");
    VGG_CUDA_CHECK(cudaMemcpyAsync(ctx.host_loss().data(), ctx.sample_loss().data(), n * sizeof(double),
                                   cudaMemcpyDeviceToHost, ctx.stream()));
    VGG_CUDA_CHECK(cudaMemcpyAsync(ctx.host_correct().data(), ctx.sample_correct().data(), n * sizeof(int),
                                   cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();
    LossResult result;
    for (std::size_t i = 0; i < n; ++i) {
      result.loss += ctx.host_loss()[i];
      result.correct += ctx.host_correct()[i];
    }
    result.loss /= double(n);
    return result;
  }

  static void adam_update(Context& ctx, float* p, const float* g, float* m, float* v, std::size_t count,
                          const AdamStep& step) {
    launch(ctx.stream(), ops::AdamUpdate{p, g, m, v, long(count), step}, "vgg::cuda Adam update");
  }
  static void sgd_update(Context& ctx, float* p, const float* g, float* momentum, std::size_t count,
                         const SgdStep& step) {
    launch(ctx.stream(), ops::SgdUpdate{p, g, momentum, long(count), step}, "vgg::cuda SGD update");
  }

  static bool all_finite(Context& ctx, const float* x, std::size_t count) {
    if (!count) return true;
    VGG_CUDA_CHECK(cudaMemsetAsync(ctx.flag(), 0, sizeof(int), ctx.stream()));
    launch(ctx.stream(), ops::FindNonFinite{x, ctx.flag(), long(count)}, "vgg::cuda finite check");
    int found = 0;
    VGG_CUDA_CHECK(cudaMemcpyAsync(&found, ctx.flag(), sizeof(int), cudaMemcpyDeviceToHost, ctx.stream()));
    ctx.synchronize();
    return found == 0;
  }

 private:
  static void gemm(Context& ctx, const ops::Gemm& g) {
    const float one = 1.0f, zero = 0.0f;
    VGG_CUDA_CHECK(cublasSgemm(ctx.cublas(), g.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                               g.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n, g.k, &one, g.a, g.lda, g.b, g.ldb,
                               &zero, g.c, g.ldc));
  }
};

static_assert(vgg::Backend<Backend>);

}  // namespace vgg::cuda
