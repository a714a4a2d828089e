#pragma once
// The execution context of the CUDA backend: the device's stream and the cuDNN and cuBLAS handles
// bound to it, created once and owned, plus what the kernels share: the cuDNN workspace (sized to
// the chosen algorithms), the cache of those algorithms per (shape, batch), the labels of the
// loss, the finite flag. Kernels run in stream order; copies to the
// host wait for the stream.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "vgg/cuda/algorithms.hpp"
#include "vgg/cuda/check.hpp"
#include "vgg/cuda/memory.hpp"

namespace vgg::cuda {

class Context {
 public:
  /// ensures: a stream and library handles on the current device.
  /// throws: std::runtime_error saying why when no CUDA device can be used.
  Context() {
    require_device();
    cudaStream_t stream = nullptr;
    VGG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    stream_.reset(stream);
    cudnnHandle_t cudnn = nullptr;
    VGG_CUDA_CHECK(cudnnCreate(&cudnn));
    cudnn_.reset(cudnn);
    VGG_CUDA_CHECK(cudnnSetStream(cudnn, stream));
    cublasHandle_t cublas = nullptr;
    VGG_CUDA_CHECK(cublasCreate(&cublas));
    cublas_.reset(cublas);
    VGG_CUDA_CHECK(cublasSetStream(cublas, stream));
    // FP32 products, no TF32 (cuBLAS's default, said explicitly): results match the CPU backend
    // to float rounding.
    VGG_CUDA_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
    flag_.reserve(1);
  }

  /// One host thread drives the device whatever is asked: the CPU backends' knob, accepted and ignored.
  void set_threads(int) {}
  int threads() const { return 1; }

  cudaStream_t stream() const { return stream_.get(); }
  cudnnHandle_t cudnn() const { return cudnn_.get(); }
  cublasHandle_t cublas() const { return cublas_.get(); }

  /// Waits for everything queued on the stream.
  void synchronize() const { VGG_CUDA_CHECK(cudaStreamSynchronize(stream())); }

  /// The convolution algorithms chosen so far, per (shape, batch), shared by every layer.
  AlgorithmCache& algorithms() { return algorithms_; }
  /// Whether the first pass of a new (shape, batch) times cuDNN's candidates (cudnnFind*Ex; the
  /// default, as PyTorch's cudnn.benchmark) or keeps the heuristics' choice. Timing picks the
  /// fastest, but may pick differently from run to run (results then differ in the last bits);
  /// heuristics pick the same every run. Affects shapes not yet cached.
  void set_measure_algorithms(bool measure) { measure_algorithms_ = measure; }
  bool measure_algorithms() const { return measure_algorithms_; }

  /// The cuDNN workspace, shared by every layer (they run one after another on one stream):
  /// ensures at least `bytes`, grown only, at reserve time.
  void reserve_workspace(std::size_t bytes) { workspace_.reserve(bytes); }
  void* workspace() { return workspace_.data(); }
  std::size_t workspace_bytes() const { return workspace_.capacity(); }

  // Scratch of the loss and of the finite check (grown only).
  Buffer<std::int32_t>& labels() { return labels_; }
  Buffer<double>& sample_loss() { return sample_loss_; }
  Buffer<int>& sample_correct() { return sample_correct_; }
  std::vector<double>& host_loss() { return host_loss_; }
  std::vector<int>& host_correct() { return host_correct_; }
  int* flag() { return flag_.data(); }

 private:
  struct StreamDeleter {
    void operator()(cudaStream_t s) const { (void)cudaStreamDestroy(s); }
  };
  struct CudnnDeleter {
    void operator()(cudnnHandle_t h) const { (void)cudnnDestroy(h); }
  };
  struct CublasDeleter {
    void operator()(cublasHandle_t h) const { (void)cublasDestroy(h); }
  };
  // Declared first so that they are destroyed last, after the buffers below are freed.
  std::unique_ptr<CUstream_st, StreamDeleter> stream_;
  std::unique_ptr<cudnnContext, CudnnDeleter> cudnn_;
  std::unique_ptr<cublasContext, CublasDeleter> cublas_;
  Buffer<std::byte> workspace_;
  AlgorithmCache algorithms_;
  bool measure_algorithms_ = true;
  Buffer<std::int32_t> labels_;
  Buffer<double> sample_loss_;
  Buffer<int> sample_correct_;
  Buffer<int> flag_;
  std::vector<double> host_loss_;
  std::vector<int> host_correct_;
};

}  // namespace vgg::cuda
