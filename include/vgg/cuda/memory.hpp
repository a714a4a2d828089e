#pragma once
// vgg::cuda::Buffer: a grow-only array in device memory, the CUDA twin of vgg::Buffer. Every device
// buffer of the backend is one, so a steady-state training step calls no cudaMalloc (device
// allocations synchronise the device and are slow); device_allocations() counts them for the tests.
// PinnedBuffer: the same over page-locked host memory (the batch staging buffers), counted by
// pinned_allocations().

#include <cuda_runtime.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "vgg/cuda/check.hpp"
#include "vgg/memory_error.hpp"

namespace vgg::cuda {

namespace detail {
inline std::atomic<long>& allocation_counter() {
  static std::atomic<long> count{0};
  return count;
}
inline std::atomic<long>& pinned_allocation_counter() {
  static std::atomic<long> count{0};
  return count;
}

/// The error of a failed allocation of `bytes` of `memory`: the bytes asked for and the bytes free
/// on the device (the batch size is added by whoever knows it: the network, a conv layer).
inline OutOfMemoryError out_of_memory(const char* memory, std::size_t bytes) {
  (void)cudaGetLastError();
  std::size_t free_bytes = 0, total_bytes = 0;
  const bool known = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
  (void)cudaGetLastError();
  return {"vgg::cuda", memory, bytes, known ? std::optional(free_bytes) : std::nullopt,
          known ? std::optional(total_bytes) : std::nullopt};
}

/// cudaMalloc of `bytes`; out of memory: vgg::OutOfMemoryError.
inline void* device_malloc(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status == cudaErrorMemoryAllocation) throw out_of_memory("device memory", bytes);
  check(status, "cudaMalloc", __FILE__, __LINE__);
  allocation_counter().fetch_add(1, std::memory_order_relaxed);
  return p;
}

/// Page-locked host memory (cudaMallocHost), from which copies run asynchronously.
inline void* pinned_malloc(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMallocHost(&p, bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    // Pinned memory is host memory: the free bytes are the host's.
    const long pages = ::sysconf(_SC_AVPHYS_PAGES), total = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    const bool known = pages > 0 && total > 0 && page > 0;
    throw OutOfMemoryError("vgg::cuda", "pinned host memory", bytes,
                           known ? std::optional(std::size_t(pages) * std::size_t(page)) : std::nullopt,
                           known ? std::optional(std::size_t(total) * std::size_t(page)) : std::nullopt);
  }
  check(status, "cudaMallocHost", __FILE__, __LINE__);
  pinned_allocation_counter().fetch_add(1, std::memory_order_relaxed);
  return p;
}
}  // namespace detail

/// Device allocations (cudaMalloc calls) made by vgg::cuda buffers so far in this process.
inline long device_allocations() { return detail::allocation_counter().load(std::memory_order_relaxed); }
/// Pinned host allocations (cudaMallocHost calls) made by vgg::cuda so far in this process.
inline long pinned_allocations() { return detail::pinned_allocation_counter().load(std::memory_order_relaxed); }

namespace detail {
struct DeviceMemory {
  static void* allocate(std::size_t bytes) { return device_malloc(bytes); }
  // cudaFree waits for the kernels that may still use the memory; an error here (a context
  // already torn down at exit) cannot be acted on in a destructor.
  static void release(void* p) noexcept { (void)cudaFree(p); }
};
struct PinnedMemory {
  static void* allocate(std::size_t bytes) { return pinned_malloc(bytes); }
  static void release(void* p) noexcept { (void)cudaFreeHost(p); }
};

template <class T, class Memory>
class BasicBuffer {
 public:
  BasicBuffer() = default;
  explicit BasicBuffer(std::size_t n) { reserve(n); }
  BasicBuffer(const BasicBuffer&) = delete;
  BasicBuffer& operator=(const BasicBuffer&) = delete;
  BasicBuffer(BasicBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
  BasicBuffer& operator=(BasicBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
  }
  ~BasicBuffer() { release(); }

  /// ensures: capacity() >= n. Grows only; the old contents are NOT kept when it grows.
  void reserve(std::size_t n) {
    if (n <= capacity_) return;
    release();
    data_ = static_cast<T*>(Memory::allocate(n * sizeof(T)));
    capacity_ = n;
  }

  /// Device pointers (Buffer): for kernels and copies, never for host reads. Host pointers (PinnedBuffer).
  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }
  std::span<T> span(std::size_t n) { return {data_, n}; }
  std::span<const T> span(std::size_t n) const { return {data_, n}; }

 private:
  void release() noexcept {
    if (data_) Memory::release(data_);
    data_ = nullptr;
    capacity_ = 0;
  }
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};
}  // namespace detail

/// A grow-only array in device memory.
template <class T>
using Buffer = detail::BasicBuffer<T, detail::DeviceMemory>;
/// A grow-only array in page-locked host memory.
template <class T>
using PinnedBuffer = detail::BasicBuffer<T, detail::PinnedMemory>;

}  // namespace vgg::cuda
