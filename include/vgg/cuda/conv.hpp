#pragma once
// The 3x3 convolutions of the CUDA backend, on cuDNN: descriptors made once per layer (filter,
// convolution, bias, ReLU) and once per batch size (input and output tensors, with the forward,
// backward-data and backward-filter algorithms chosen once by cuDNN's heuristics and cached). The
// cuDNN workspace is the context's, shared by every layer and grown only.

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgg/backend.hpp"
#include "vgg/cuda/check.hpp"
#include "vgg/cuda/context.hpp"
#include "vgg/cuda/launch.hpp"
#include "vgg/cuda/memory.hpp"
#include "vgg/cuda/ops.hpp"

namespace vgg::cuda {

namespace detail {
struct TensorDeleter {
  void operator()(cudnnTensorDescriptor_t d) const { (void)cudnnDestroyTensorDescriptor(d); }
};
struct FilterDeleter {
  void operator()(cudnnFilterDescriptor_t d) const { (void)cudnnDestroyFilterDescriptor(d); }
};
struct ConvolutionDeleter {
  void operator()(cudnnConvolutionDescriptor_t d) const { (void)cudnnDestroyConvolutionDescriptor(d); }
};
struct ActivationDeleter {
  void operator()(cudnnActivationDescriptor_t d) const { (void)cudnnDestroyActivationDescriptor(d); }
};
using TensorDescriptor = std::unique_ptr<cudnnTensorStruct, TensorDeleter>;
using FilterDescriptor = std::unique_ptr<cudnnFilterStruct, FilterDeleter>;
using ConvolutionDescriptor = std::unique_ptr<cudnnConvolutionStruct, ConvolutionDeleter>;
using ActivationDescriptor = std::unique_ptr<cudnnActivationStruct, ActivationDeleter>;

inline TensorDescriptor make_tensor(int n, int c, int h, int w) {
  cudnnTensorDescriptor_t d = nullptr;
  VGG_CUDA_CHECK(cudnnCreateTensorDescriptor(&d));
  TensorDescriptor owned(d);
  VGG_CUDA_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
  return owned;
}

/// f(), with an error (out of device memory, above all) told which layer and batch size it served.
template <class F>
void reserving(const ConvShape& s, int batch, F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string(e.what()) + "; while reserving the conv layer " + std::to_string(s.cin) +
                             " -> " + std::to_string(s.cout) + " channels, " + std::to_string(s.h) + " x " +
                             std::to_string(s.w) + ", for a batch of " + std::to_string(batch));
  }
}

/// The first algorithm of cuDNN's ranking that runs and is deterministic (the same gradients on
/// every run, as the CPU backend gives), else the first that runs.
template <class Perf>
auto choose_algorithm(const Perf* perf, int returned, const char* what) {
  for (int i = 0; i < returned; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) return perf[i].algo;
  for (int i = 0; i < returned; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i].algo;
  throw std::runtime_error(std::string("vgg::cuda: cuDNN offers no ") + what + " algorithm for this convolution");
}
}  // namespace detail

/// A conv layer's cuDNN state. Movable; not copyable.
class ConvWorkspace {
 public:
  /// The per-batch-size part: tensors and the chosen algorithms.
  struct Plan {
    int batch = 0;
    detail::TensorDescriptor x, y;
    cudnnConvolutionFwdAlgo_t forward{};
    cudnnConvolutionBwdDataAlgo_t backward_data{};
    cudnnConvolutionBwdFilterAlgo_t backward_filter{};
  };

  /// ensures: descriptors, algorithms and workspace for batches of `batch`; nothing is allocated
  /// by a later pass of that batch size.
  void reserve(Context& ctx, const ConvShape& s, int batch) {
    detail::reserving(s, batch, [&] { (void)plan(ctx, s, batch); });
  }
  /// With pooled, also the gradient of the conv's full-size output (the pool's backward writes it).
  void reserve_backward(Context& ctx, const ConvShape& s, int batch, bool pooled) {
    detail::reserving(s, batch, [&] {
      (void)plan(ctx, s, batch);
      if (pooled)
        output_gradient_.reserve(std::size_t(batch) * std::size_t(s.cout) * std::size_t(s.h) * std::size_t(s.w));
    });
  }

  /// The plan of batch size n, made the first time n is seen.
  const Plan& plan(Context& ctx, const ConvShape& s, int n) {
    for (const auto& p : plans_)
      if (p->batch == n) return *p;
    if (!filter_) make_layer_descriptors(s);
    auto p = std::make_unique<Plan>();
    p->batch = n;
    p->x = detail::make_tensor(n, s.cin, s.h, s.w);
    p->y = detail::make_tensor(n, s.cout, s.h, s.w);
    const cudnnHandle_t h = ctx.cudnn();
    constexpr int max_algorithms = 16;
    int returned = 0;
    std::size_t bytes = 0, most = 0;
    {
      std::array<cudnnConvolutionFwdAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p->x.get(), filter_.get(), convolution_.get(),
                                                            p->y.get(), max_algorithms, &returned, perf.data()));
      p->forward = detail::choose_algorithm(perf.data(), returned, "forward");
      VGG_CUDA_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p->x.get(), filter_.get(), convolution_.get(),
                                                             p->y.get(), p->forward, &bytes));
      most = std::max(most, bytes);
    }
    {
      std::array<cudnnConvolutionBwdDataAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_.get(), p->y.get(), convolution_.get(),
                                                                 p->x.get(), max_algorithms, &returned, perf.data()));
      p->backward_data = detail::choose_algorithm(perf.data(), returned, "backward-data");
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, filter_.get(), p->y.get(), convolution_.get(),
                                                                  p->x.get(), p->backward_data, &bytes));
      most = std::max(most, bytes);
    }
    {
      std::array<cudnnConvolutionBwdFilterAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x.get(), p->y.get(), convolution_.get(),
                                                                   filter_.get(), max_algorithms, &returned,
                                                                   perf.data()));
      p->backward_filter = detail::choose_algorithm(perf.data(), returned, "backward-filter");
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x.get(), p->y.get(), convolution_.get(),
                                                                    filter_.get(), p->backward_filter, &bytes));
      most = std::max(most, bytes);
    }
    ctx.reserve_workspace(most);
    plans_.push_back(std::move(p));
    return *plans_.back();
  }

  /// y = relu(conv(x, w) + b) on batch n: cuDNN's fused conv + bias + activation where it runs
  /// it, else the convolution then a bias + ReLU kernel. Without relu (a conv before batch norm),
  /// the convolution then a bias kernel.
  void forward(Context& ctx, const ConvShape& s, const float* x, const float* weight, const float* bias, float* y,
               int n, bool relu = true) {
    const Plan& p = plan(ctx, s, n);
    const float one = 1.0f, zero = 0.0f;
    if (fused_ && relu) {
      const cudnnStatus_t status = cudnnConvolutionBiasActivationForward(
          ctx.cudnn(), &one, p.x.get(), x, filter_.get(), weight, convolution_.get(), p.forward, ctx.workspace(),
          ctx.workspace_bytes(), &zero, p.y.get(), y, bias_.get(), bias, relu_.get(), p.y.get(), y);
      if (status == CUDNN_STATUS_SUCCESS) return;
      if (CUDNN_STATUS_CATEGORY(status) != CUDNN_STATUS_NOT_SUPPORTED)
        VGG_CUDA_CHECK(status);  // throws, naming cudnnConvolutionBiasActivationForward's status
      fused_ = false;            // not for this configuration: the unfused pair from now on
    }
    VGG_CUDA_CHECK(cudnnConvolutionForward(ctx.cudnn(), &one, p.x.get(), x, filter_.get(), weight, convolution_.get(),
                                           p.forward, ctx.workspace(), ctx.workspace_bytes(), &zero, p.y.get(), y));
    const long plane = long(s.h) * s.w;
    launch(ctx.stream(), ops::BiasRelu{y, bias, long(n) * s.cout * plane, plane, s.cout, relu},
           "vgg::cuda conv bias + ReLU");
  }

  /// Given dz (the gradient behind the ReLU) on batch n: the bias and weight gradients, and dx unless null.
  void backward_products(Context& ctx, const ConvShape& s, const float* x, const float* weight, const float* dz,
                         float* dx, float* weight_grad, float* bias_grad, int n) {
    const Plan& p = plan(ctx, s, n);
    const float one = 1.0f, zero = 0.0f;
    VGG_CUDA_CHECK(cudnnConvolutionBackwardBias(ctx.cudnn(), &one, p.y.get(), dz, &zero, bias_.get(), bias_grad));
    VGG_CUDA_CHECK(cudnnConvolutionBackwardFilter(ctx.cudnn(), &one, p.x.get(), x, p.y.get(), dz, convolution_.get(),
                                                  p.backward_filter, ctx.workspace(), ctx.workspace_bytes(), &zero,
                                                  filter_.get(), weight_grad));
    if (dx)
      VGG_CUDA_CHECK(cudnnConvolutionBackwardData(ctx.cudnn(), &one, filter_.get(), weight, p.y.get(), dz,
                                                  convolution_.get(), p.backward_data, ctx.workspace(),
                                                  ctx.workspace_bytes(), &zero, p.x.get(), dx));
  }

  /// The gradient of the full-size conv output, for the fused pool's backward.
  float* output_gradient() { return output_gradient_.data(); }

 private:
  void make_layer_descriptors(const ConvShape& s) {
    cudnnFilterDescriptor_t f = nullptr;
    VGG_CUDA_CHECK(cudnnCreateFilterDescriptor(&f));
    filter_.reset(f);
    VGG_CUDA_CHECK(cudnnSetFilter4dDescriptor(f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s.cout, s.cin, 3, 3));
    cudnnConvolutionDescriptor_t c = nullptr;
    VGG_CUDA_CHECK(cudnnCreateConvolutionDescriptor(&c));
    convolution_.reset(c);
    VGG_CUDA_CHECK(cudnnSetConvolution2dDescriptor(c, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // FP32 arithmetic, no TF32 (which cuDNN would otherwise allow on Ampere and later): results
    // match the CPU backend to float rounding.
    VGG_CUDA_CHECK(cudnnSetConvolutionMathType(c, CUDNN_FMA_MATH));
    bias_ = detail::make_tensor(1, s.cout, 1, 1);
    cudnnActivationDescriptor_t a = nullptr;
    VGG_CUDA_CHECK(cudnnCreateActivationDescriptor(&a));
    relu_.reset(a);
    VGG_CUDA_CHECK(cudnnSetActivationDescriptor(a, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }

  detail::FilterDescriptor filter_;
  detail::ConvolutionDescriptor convolution_;
  detail::TensorDescriptor bias_;
  detail::ActivationDescriptor relu_;
  std::vector<std::unique_ptr<Plan>> plans_;  // a few: the training batch, the last partial one, eval's
  Buffer<float> output_gradient_;
  bool fused_ = true;
};

/// What a fused conv + 2x2 max-pool keeps between its passes: the conv's full ReLU output.
class PoolState {
 public:
  void reserve(const ConvShape& s, int batch) {
    detail::reserving(s, batch, [&] {
      output_.reserve(std::size_t(batch) * std::size_t(s.cout) * std::size_t(s.h) * std::size_t(s.w));
    });
  }
  float* output() { return output_.data(); }
  const float* output() const { return output_.data(); }

 private:
  Buffer<float> output_;
};

}  // namespace vgg::cuda
