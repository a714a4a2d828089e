#pragma once
// Single-threaded GEMM on row-major matrices, with packing buffers owned by the caller. Two paths:
// gemm_eigen, through Eigen's packed GEBP kernels (the plain, portable path), and, on AVX-512
// targets, our own kernel (gemm_avx512.hpp), 1.2-2x faster on every shape the layers use.
// Eigen's public product API allocates its packing buffers on every call (heap traffic and
// fresh-page faults in every step) and threads internally; the layers here split work across
// threads themselves, so each thread calls these with its own GemmPlan.

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <cstdint>

#include "vgg/buffer.hpp"
#include "vgg/cpu/gemm_avx512.hpp"
#include "vgg/cpu/gemm_amx.hpp"
#include "vgg/cpu/gemm_bf16.hpp"

namespace vgg::cpu {

using Index = Eigen::Index;

namespace detail {
/// Eigen's blocking descriptor, pointed at buffers we own.
class OwnedBlocking : public Eigen::internal::level3_blocking<float, float> {
 public:
  void set(Index mc, Index nc, Index kc, float* a, float* b) {
    m_mc = mc;
    m_nc = nc;
    m_kc = kc;
    m_blockA = a;
    m_blockB = b;
  }
};
}  // namespace detail

/// Packing buffers and cache blocking for GEMMs up to a maximum size, set up once.
class GemmPlan {
 public:
  /// ensures: gemm() may be called with this plan for any m <= max_m, n <= max_n, k <= max_k.
  void reserve(Index max_m, Index max_n, Index max_k) {
    if (max_m <= max_m_ && max_n <= max_n_ && max_k <= max_k_) return;
    max_m_ = std::max(max_m, max_m_);
    max_n_ = std::max(max_n, max_n_);
    max_k_ = std::max(max_k, max_k_);
    // Column-major view of C^T = op(B)^T op(A)^T: rows = n, cols = m, depth = k.
    Index kc = max_k_, mc = max_n_, nc = max_m_;
    Eigen::internal::computeProductBlockingSizes<float, float, 1, Index>(kc, mc, nc, Index(1));
    a_.reserve(std::size_t(kc * mc) + 64);
    b_.reserve(std::size_t(kc * nc) + 64);
    blocking_.set(mc, nc, kc, a_.data(), b_.data());
    if constexpr (kFastKernels) {
      fast_a_.reserve(std::size_t((max_m_ + avx512::kMr - 1) / avx512::kMr * avx512::kMr * avx512::kKc));
      fast_b_.reserve(std::size_t(avx512::kKc * avx512::kNr));
      // Where bf16 can run, its packing buffers too, so that switching precision never allocates.
      if (bf16::bf16_gemm_available()) {
        bf16_a_.reserve(std::size_t(amx::bf16_a_pack_size(max_m_)));
        bf16_b_.reserve(std::size_t(amx::bf16_b_pack_size()));
      }
    }
  }
  /// Writes every packing buffer once, so that a plan first used batches after it was reserved
  /// (a Winograd layer) faults no page in a steady-state pass.
  void touch() {
    for (Buffer<float>* b : {&a_, &b_, &fast_a_, &fast_b_})
      if (b->capacity()) std::memset(b->data(), 0, b->capacity() * sizeof(float));
    for (Buffer<std::uint32_t>* b : {&bf16_a_, &bf16_b_})
      if (b->capacity()) std::memset(b->data(), 0, b->capacity() * sizeof(std::uint32_t));
  }
  /// Whether the AVX-512 path's products through this plan take bf16 operands.
  /// requires: !on || bf16::bf16_gemm_available().
  void set_bf16(bool on) { bf16_ = on; }
  bool bf16() const { return bf16_; }
  std::uint32_t* bf16_a_pack() { return bf16_a_.data(); }
  std::uint32_t* bf16_b_pack() { return bf16_b_.data(); }
  detail::OwnedBlocking& blocking() { return blocking_; }
  float* fast_a_pack() { return fast_a_.data(); }
  float* fast_b_pack() { return fast_b_.data(); }

 private:
  Index max_m_ = 0, max_n_ = 0, max_k_ = 0;
  Buffer<float> a_, b_, fast_a_, fast_b_;
  Buffer<std::uint32_t> bf16_a_, bf16_b_;
  bool bf16_ = false;
  detail::OwnedBlocking blocking_;
};

/// C (m x n, row stride ldc) += alpha * op(A) * op(B), all row-major; op(A) is m x k, op(B) is k x n.
/// A is stored m x k (lda) or, with TransA, k x m; likewise B is k x n (ldb) or, with TransB, n x k.
/// requires: plan.reserve(M, N, K) was called with M >= m, N >= n, K >= k. Never allocates.
/// This is the plain path: Eigen's kernels, on every target.
template <bool TransA, bool TransB>
inline void gemm_eigen(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c,
                 Index ldc, GemmPlan& plan, float alpha = 1.0f) {
  if (m == 0 || n == 0 || k == 0) return;
  // Row-major C is the column-major C^T; C^T = op(B)^T * op(A)^T needs no copies:
  // a row-major operand read as column-major is its transpose.
  using Product = Eigen::internal::general_matrix_matrix_product<
      Index, float, TransB ? Eigen::RowMajor : Eigen::ColMajor, false, float,
      TransA ? Eigen::RowMajor : Eigen::ColMajor, false, Eigen::ColMajor, 1>;
  Product::run(n, m, k, b, ldb, a, lda, c, 1, ldc, alpha, plan.blocking(), nullptr);
}

/// Same contract as gemm_eigen; takes the AVX-512 kernel on that path, in bf16 where the plan says.
template <bool TransA, bool TransB, KernelPath Path = fastest_path>
inline void gemm(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c,
                 Index ldc, GemmPlan& plan, float alpha = 1.0f) {
  if (m == 0 || n == 0 || k == 0) return;
#ifdef VGG_FAST_KERNELS
  if constexpr (Path == KernelPath::avx512) {
#ifdef VGG_BF16_KERNELS
    if (plan.bf16()) {
      amx::bf16_gemm<TransA, TransB>(m, n, k, a, lda, b, ldb, c, ldc, plan.bf16_a_pack(), plan.bf16_b_pack(),
                                     avx512::Epilogue{alpha, true, nullptr, false});
      return;
    }
#endif
    avx512::gemm<TransA, TransB>(m, n, k, a, lda, b, ldb, c, ldc, plan.fast_a_pack(), plan.fast_b_pack(),
                                 avx512::Epilogue{alpha, true, nullptr, false});
    return;
  }
#endif
  gemm_eigen<TransA, TransB>(m, n, k, a, lda, b, ldb, c, ldc, plan, alpha);
}

}  // namespace vgg::cpu
