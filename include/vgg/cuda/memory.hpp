#pragma once
// vgg::cuda::Buffer: a grow-only array in device memory, the CUDA twin of vgg::Buffer. Every device
// buffer of the backend is one, so a steady-state training step calls no cudaMalloc (device
// allocations synchronise the device and are slow); device_allocations() counts them for the tests.

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "vgg/cuda/check.hpp"

namespace vgg::cuda {

namespace detail {
inline std::atomic<long>& allocation_counter() {
  static std::atomic<long> count{0};
  return count;
}

/// cudaMalloc of `bytes`; out of memory names the bytes asked for and the bytes free.
inline void* device_malloc(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    std::size_t free_bytes = 0, total_bytes = 0;
    const bool known = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
    (void)cudaGetLastError();
    throw std::runtime_error("vgg::cuda: out of device memory: asked for " + std::to_string(bytes) + " bytes, " +
                             (known ? std::to_string(free_bytes) + " bytes free of " + std::to_string(total_bytes)
                                    : std::string("free bytes unknown")) +
                             " (a smaller batch size needs less)");
  }
  check(status, "cudaMalloc", __FILE__, __LINE__);
  allocation_counter().fetch_add(1, std::memory_order_relaxed);
  return p;
}
}  // namespace detail

/// Device allocations (cudaMalloc calls) made by vgg::cuda buffers so far in this process.
inline long device_allocations() { return detail::allocation_counter().load(std::memory_order_relaxed); }

template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t n) { reserve(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
  }
  ~Buffer() { release(); }

  /// ensures: capacity() >= n. Grows only; the old contents are NOT kept when it grows.
  void reserve(std::size_t n) {
    if (n <= capacity_) return;
    release();
    data_ = static_cast<T*>(detail::device_malloc(n * sizeof(T)));
    capacity_ = n;
  }

  /// Device pointers: for kernels and copies, never for host reads.
  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }
  std::span<T> span(std::size_t n) { return {data_, n}; }
  std::span<const T> span(std::size_t n) const { return {data_, n}; }

 private:
  void release() noexcept {
    // cudaFree waits for the kernels that may still use the memory; an error here (a context
    // already torn down at exit) cannot be acted on in a destructor.
    if (data_) (void)cudaFree(data_);
    data_ = nullptr;
    capacity_ = 0;
  }
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace vgg::cuda
