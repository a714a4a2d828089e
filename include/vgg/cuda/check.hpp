#pragma once
// Status checks for CUDA, cuDNN and cuBLAS calls: every failure becomes a std::runtime_error that
// names the call, the file and line, and the library's own error string.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdexcept>
#include <string>

namespace vgg::cuda {

namespace detail {
[[noreturn]] inline void fail(const char* library, const char* call, const char* file, int line,
                              const std::string& error) {
  throw std::runtime_error(std::string("vgg::cuda: ") + library + " call " + call + " failed at " + file + ":" +
                           std::to_string(line) + ": " + error);
}
inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear a non-sticky error so that the program may go on (e.g. after a failed malloc)
    fail("CUDA", call, file, line, std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")");
  }
}
inline void check(cudnnStatus_t status, const char* call, const char* file, int line) {
  if (status != CUDNN_STATUS_SUCCESS) fail("cuDNN", call, file, line, cudnnGetErrorString(status));
}
inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS", call, file, line, std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")");
}
}  // namespace detail

}  // namespace vgg::cuda

/// Checks a cudaError_t, cudnnStatus_t or cublasStatus_t; throws std::runtime_error on failure.
#define VGG_CUDA_CHECK(call) ::vgg::cuda::detail::check((call), #call, __FILE__, __LINE__)
/// After a kernel launch: reports a bad launch configuration or a missing kernel image at once.
#define VGG_CUDA_CHECK_LAUNCH(what) ::vgg::cuda::detail::check(cudaGetLastError(), what, __FILE__, __LINE__)

namespace vgg::cuda {

/// Empty when a CUDA device can be used; otherwise why not (no device, no driver, a driver older
/// than this runtime), in the CUDA runtime's words.
inline std::string device_problem() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device: ") + cudaGetErrorString(status) + " (cudaGetDeviceCount returned " +
           cudaGetErrorName(status) + ")";
  }
  if (count == 0) return "no CUDA device found (cudaGetDeviceCount found 0 devices)";
  return {};
}

/// ensures: a CUDA device can be used; else throws std::runtime_error saying why.
inline void require_device() {
  if (const std::string problem = device_problem(); !problem.empty()) throw std::runtime_error("vgg::cuda: " + problem);
}

}  // namespace vgg::cuda
