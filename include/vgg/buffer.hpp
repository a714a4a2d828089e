#pragma once
// vgg::Buffer: a 64-byte aligned, grow-only array. Every work buffer of the library is one, so
// steady-state steps never allocate (fresh pages are expensive: touch them once, then reuse).

#include <cstddef>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <span>
#include <utility>

namespace vgg {

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
    // Large buffers (activations, gradients) start on a 2 MiB boundary and ask for transparent huge
    // pages: fewer TLB misses when a layer sweeps hundreds of MiB, and 512x fewer first-touch faults.
    const std::size_t align = n * sizeof(T) >= kHugeFrom ? kHuge : kAlign;
    const std::size_t bytes = (n * sizeof(T) + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, bytes));
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) (void)madvise(data_, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    capacity_ = n;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }
  std::span<T> span(std::size_t n) { return {data_, n}; }
  std::span<const T> span(std::size_t n) const { return {data_, n}; }

 private:
  static constexpr std::size_t kAlign = 64;
  static constexpr std::size_t kHuge = std::size_t(2) << 20, kHugeFrom = std::size_t(4) << 20;
  void release() {
    std::free(data_);
    data_ = nullptr;
    capacity_ = 0;
  }
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace vgg
