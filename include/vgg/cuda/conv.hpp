#pragma once
// The 3x3 convolutions of the CUDA backend, on cuDNN: descriptors made once per layer (filter,
// convolution, bias, ReLU) and once per batch size (input and output tensors). The forward,
// backward-data and backward-filter algorithms are chosen once per (shape, batch) and cached in
// the context (algorithms.hpp): cuDNN's heuristics first, then, at the first pass with real
// buffers, the fastest of cuDNN's timed candidates (cudnnFind*Ex, in a temporary workspace as
// large as the candidates ask, capped at half the free memory). The cuDNN workspace is the
// context's, shared by every layer, grown only, to what the chosen algorithms need.

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgg/backend.hpp"
#include "vgg/cuda/algorithms.hpp"
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

inline std::string describe(const ConvShape& s) {
  return "the conv layer " + std::to_string(s.cin) + " -> " + std::to_string(s.cout) + " channels, " +
         std::to_string(s.h) + " x " + std::to_string(s.w);
}

/// f(), with an error told which conv layer and batch size it served: out of memory as a
/// vgg::OutOfMemoryError that names them, other failures (cuDNN's) in their message.
template <class F>
void reserving(const ConvShape& s, int batch, F&& f) {
  try {
    for_batch(batch, [&] { return describe(s); }, f);
  } catch (const OutOfMemoryError&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string(e.what()) + "; while reserving " + describe(s) + ", for a batch of " +
                             std::to_string(batch));
  }
}

/// The workspace a timed search runs in: `wanted` bytes (capped at half the free device memory)
/// in a buffer of its own, freed after the search; if even that fails, the context's workspace.
class SearchWorkspace {
 public:
  SearchWorkspace(Context& ctx, std::size_t wanted) {
    std::size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) wanted = std::min(wanted, free_bytes / 2);
    (void)cudaGetLastError();
    if (wanted > ctx.workspace_bytes()) {
      try {
        own_.reserve(wanted);
        data_ = own_.data();
        bytes_ = wanted;
        return;
      } catch (const OutOfMemoryError&) {
        // a smaller search: the candidates that fit the context's workspace
      }
    }
    data_ = ctx.workspace();
    bytes_ = ctx.workspace_bytes();
  }
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  Buffer<std::byte> own_;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};
}  // namespace detail

/// A conv layer's cuDNN state. Movable; not copyable.
class ConvWorkspace {
 public:
  /// The per-batch-size part: tensors, and the algorithms of (shape, batch) in the context's cache.
  struct Plan {
    int batch = 0;
    detail::TensorDescriptor x, y;
    ConvAlgorithms* algorithms = nullptr;
  };

  /// ensures: descriptors, algorithms and workspace for batches of `batch`. The first pass of a new
  /// (shape, batch) times the algorithms (a temporary search workspace, and the shared workspace
  /// grown to the chosen ones); later passes of that batch size allocate nothing.
  void reserve(Context& ctx, const ConvShape& s, int batch) { (void)plan(ctx, s, batch); }
  /// With pooled, also the gradient of the conv's full-size output (the pool's backward writes it).
  void reserve_backward(Context& ctx, const ConvShape& s, int batch, bool pooled) {
    (void)plan(ctx, s, batch);
    if (pooled)
      detail::reserving(s, batch, [&] {
        output_gradient_.reserve(std::size_t(batch) * std::size_t(s.cout) * std::size_t(s.h) * std::size_t(s.w));
      });
  }

  /// The plan of batch size n, made the first time n is seen.
  const Plan& plan(Context& ctx, const ConvShape& s, int n) {
    for (const auto& p : plans_)
      if (p->batch == n) return *p;
    detail::reserving(s, n, [&] { make_plan(ctx, s, n); });
    return *plans_.back();
  }

  /// y = relu(conv(x, w) + b) on batch n: cuDNN's fused conv + bias + activation where it runs
  /// it, else the convolution then a bias + ReLU kernel. Without relu (a conv before batch norm),
  /// the convolution then a bias kernel.
  void forward(Context& ctx, const ConvShape& s, const float* x, const float* weight, const float* bias, float* y,
               int n, bool relu = true) {
    const Plan& p = plan(ctx, s, n);
    ConvAlgorithms& a = *p.algorithms;
    if (ctx.measure_algorithms() && !a.forward.measured)
      detail::reserving(s, n, [&] { measure_forward(ctx, p, x, weight, y); });
    const float one = 1.0f, zero = 0.0f;
    if (fused_ && relu) {
      const cudnnStatus_t status = cudnnConvolutionBiasActivationForward(
          ctx.cudnn(), &one, p.x.get(), x, filter_.get(), weight, convolution_.get(), a.forward.algo, ctx.workspace(),
          ctx.workspace_bytes(), &zero, p.y.get(), y, bias_.get(), bias, relu_.get(), p.y.get(), y);
      if (status == CUDNN_STATUS_SUCCESS) return;
      if (CUDNN_STATUS_CATEGORY(status) != CUDNN_STATUS_NOT_SUPPORTED)
        VGG_CUDA_CHECK(status);  // throws, naming cudnnConvolutionBiasActivationForward's status
      fused_ = false;            // not for this configuration: the unfused pair from now on
    }
    VGG_CUDA_CHECK(cudnnConvolutionForward(ctx.cudnn(), &one, p.x.get(), x, filter_.get(), weight, convolution_.get(),
                                           a.forward.algo, ctx.workspace(), ctx.workspace_bytes(), &zero, p.y.get(), y));
    const long plane = long(s.h) * s.w;
    launch(ctx.stream(), ops::BiasRelu{y, bias, long(n) * s.cout * plane, plane, s.cout, relu},
           "vgg::cuda conv bias + ReLU");
  }

  /// Given dz (the gradient behind the ReLU) on batch n: the bias and weight gradients, and dx unless null.
  void backward_products(Context& ctx, const ConvShape& s, const float* x, const float* weight, const float* dz,
                         float* dx, float* weight_grad, float* bias_grad, int n) {
    const Plan& p = plan(ctx, s, n);
    ConvAlgorithms& a = *p.algorithms;
    if (ctx.measure_algorithms() && !a.backward_filter.measured)
      detail::reserving(s, n, [&] { measure_backward_filter(ctx, p, x, dz, weight_grad); });
    if (dx && ctx.measure_algorithms() && !a.backward_data.measured)
      detail::reserving(s, n, [&] { measure_backward_data(ctx, p, weight, dz, dx); });
    const float one = 1.0f, zero = 0.0f;
    VGG_CUDA_CHECK(cudnnConvolutionBackwardBias(ctx.cudnn(), &one, p.y.get(), dz, &zero, bias_.get(), bias_grad));
    VGG_CUDA_CHECK(cudnnConvolutionBackwardFilter(ctx.cudnn(), &one, p.x.get(), x, p.y.get(), dz, convolution_.get(),
                                                  a.backward_filter.algo, ctx.workspace(), ctx.workspace_bytes(), &zero,
                                                  filter_.get(), weight_grad));
    if (dx)
      VGG_CUDA_CHECK(cudnnConvolutionBackwardData(ctx.cudnn(), &one, filter_.get(), weight, p.y.get(), dz,
                                                  convolution_.get(), a.backward_data.algo, ctx.workspace(),
                                                  ctx.workspace_bytes(), &zero, p.x.get(), dx));
  }

  /// The gradient of the full-size conv output, for the fused pool's backward.
  float* output_gradient() { return output_gradient_.data(); }

 private:
  static constexpr int max_algorithms = 16;

  void make_plan(Context& ctx, const ConvShape& s, int n) {
    if (!filter_) make_layer_descriptors(s);
    auto p = std::make_unique<Plan>();
    p->batch = n;
    p->x = detail::make_tensor(n, s.cin, s.h, s.w);
    p->y = detail::make_tensor(n, s.cout, s.h, s.w);
    const ConvKey key{s, n};
    p->algorithms = ctx.algorithms().find(key);
    if (!p->algorithms) p->algorithms = &ctx.algorithms().insert(key, heuristic_algorithms(ctx, *p));
    ctx.reserve_workspace(p->algorithms->workspace());
    plans_.push_back(std::move(p));
  }

  /// cuDNN's heuristic choice for each direction (no device work), with the workspace each needs.
  ConvAlgorithms heuristic_algorithms(Context& ctx, const Plan& p) const {
    const cudnnHandle_t h = ctx.cudnn();
    constexpr std::size_t any = ~std::size_t(0);
    ConvAlgorithms a;
    int returned = 0;
    auto largest = [&](const auto& perf) {
      for (int i = 0; i < returned; ++i)
        if (perf[std::size_t(i)].status == CUDNN_STATUS_SUCCESS)
          a.search_workspace = std::max(a.search_workspace, perf[std::size_t(i)].memory);
    };
    {
      std::array<cudnnConvolutionFwdAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x.get(), filter_.get(), convolution_.get(), p.y.get(),
                                                            max_algorithms, &returned, perf.data()));
      a.forward = choose_algorithm(std::span<const cudnnConvolutionFwdAlgoPerf_t>(perf.data(), std::size_t(returned)),
                                   any, false, "forward");
      largest(perf);
    }
    {
      std::array<cudnnConvolutionBwdDataAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, filter_.get(), p.y.get(), convolution_.get(),
                                                                 p.x.get(), max_algorithms, &returned, perf.data()));
      a.backward_data = choose_algorithm(
          std::span<const cudnnConvolutionBwdDataAlgoPerf_t>(perf.data(), std::size_t(returned)), any, false,
          "backward-data");
      largest(perf);
    }
    {
      std::array<cudnnConvolutionBwdFilterAlgoPerf_t, max_algorithms> perf{};
      VGG_CUDA_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x.get(), p.y.get(), convolution_.get(),
                                                                   filter_.get(), max_algorithms, &returned,
                                                                   perf.data()));
      a.backward_filter = choose_algorithm(
          std::span<const cudnnConvolutionBwdFilterAlgoPerf_t>(perf.data(), std::size_t(returned)), any, false,
          "backward-filter");
      largest(perf);
    }
    set_workspace_sizes(ctx, p, a);
    return a;
  }

  /// The exact workspace of each chosen algorithm (cuDNN's query, not the estimate in its perf list).
  void set_workspace_sizes(Context& ctx, const Plan& p, ConvAlgorithms& a) const {
    const cudnnHandle_t h = ctx.cudnn();
    VGG_CUDA_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p.x.get(), filter_.get(), convolution_.get(), p.y.get(),
                                                           a.forward.algo, &a.forward.workspace));
    VGG_CUDA_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, filter_.get(), p.y.get(), convolution_.get(),
                                                                p.x.get(), a.backward_data.algo,
                                                                &a.backward_data.workspace));
    VGG_CUDA_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x.get(), p.y.get(), convolution_.get(),
                                                                  filter_.get(), a.backward_filter.algo,
                                                                  &a.backward_filter.workspace));
  }

  /// Times cuDNN's candidates on the real buffers (the outputs written are overwritten by the pass
  /// that follows) and keeps the fastest eligible one; if none is, the heuristics' choice stays.
  /// Either way the direction is not searched again for this (shape, batch).
  template <class Perf, class Choice, class Find>
  void measure(Context& ctx, const Plan& p, Choice& choice, const char* what, Find&& find) {
    const detail::SearchWorkspace search(ctx, p.algorithms->search_workspace);
    std::array<Perf, max_algorithms> perf{};
    int returned = 0;
    find(search.data(), search.bytes(), perf.data(), &returned);
    try {
      const auto chosen = choose_algorithm(std::span<const Perf>(perf.data(), std::size_t(returned)), search.bytes(),
                                           /*measured=*/true, what);
      choice = chosen;
      set_workspace_sizes(ctx, p, *p.algorithms);
    } catch (const std::runtime_error&) {
      choice.measured = true;  // none ran: the heuristics' choice stays
    }
    ctx.reserve_workspace(p.algorithms->workspace());
  }
  void measure_forward(Context& ctx, const Plan& p, const float* x, const float* weight, float* y) {
    measure<cudnnConvolutionFwdAlgoPerf_t>(
        ctx, p, p.algorithms->forward, "forward",
        [&](void* ws, std::size_t bytes, cudnnConvolutionFwdAlgoPerf_t* perf, int* returned) {
          VGG_CUDA_CHECK(cudnnFindConvolutionForwardAlgorithmEx(ctx.cudnn(), p.x.get(), x, filter_.get(), weight,
                                                                convolution_.get(), p.y.get(), y, max_algorithms,
                                                                returned, perf, ws, bytes));
        });
  }
  void measure_backward_data(Context& ctx, const Plan& p, const float* weight, const float* dy, float* dx) {
    measure<cudnnConvolutionBwdDataAlgoPerf_t>(
        ctx, p, p.algorithms->backward_data, "backward-data",
        [&](void* ws, std::size_t bytes, cudnnConvolutionBwdDataAlgoPerf_t* perf, int* returned) {
          VGG_CUDA_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(ctx.cudnn(), filter_.get(), weight, p.y.get(), dy,
                                                                     convolution_.get(), p.x.get(), dx, max_algorithms,
                                                                     returned, perf, ws, bytes));
        });
  }
  void measure_backward_filter(Context& ctx, const Plan& p, const float* x, const float* dy, float* weight_grad) {
    measure<cudnnConvolutionBwdFilterAlgoPerf_t>(
        ctx, p, p.algorithms->backward_filter, "backward-filter",
        [&](void* ws, std::size_t bytes, cudnnConvolutionBwdFilterAlgoPerf_t* perf, int* returned) {
          VGG_CUDA_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
              ctx.cudnn(), p.x.get(), x, p.y.get(), dy, convolution_.get(), filter_.get(), weight_grad,
              max_algorithms, returned, perf, ws, bytes));
        });
  }

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
