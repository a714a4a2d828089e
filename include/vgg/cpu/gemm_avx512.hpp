#pragma once
// AVX-512 GEMM: an 8 x 32 register tile (16 zmm accumulators) fed straight from the operands where
// their layout allows, and packed otherwise. Why our own kernel: Eigen 3.4's float GEBP tile leaves
// half of AVX-512's 32 registers unused and packs both operands on every call; this kernel runs at
// ~98% of one core's FMA peak on packed data and skips packing where a row-major operand already
// has the layout the kernel reads. The plain path (gemm_eigen, materialised im2col) stays as the
// reference that every fast path is tested against.
//
// Compiled only when the compiler targets AVX-512 (-march=native on such a CPU) and VGG_PLAIN_KERNELS
// is not defined (kernel_path.hpp, the one switch).

#include <algorithm>
#include <cstddef>

#include "vgg/cpu/cpu_info.hpp"
#include "vgg/cpu/kernel_path.hpp"
#include "vgg/cpu/transpose16x16.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

namespace avx512 {

using Index = std::ptrdiff_t;
inline constexpr int kMr = 8;      // rows of C per tile (broadcast operand A)
inline constexpr int kNr = 32;     // columns of C per tile (two zmm vectors of operand B)
inline constexpr Index kKc = 256;  // depth per pass: an 8 x 256 A tile and a 256 x 32 B panel sit in L1

/// Rows of C per block in the forward product (A B): the block's A (rows x kKc floats) takes an
/// eighth of L2, the rest holding the pass's B panels and C's tiles. 1 MiB of L2 gives 128 rows (the
/// EPYC kinds: measured best there among 64-512); 2 MiB gives 256 (the Xeon kind). Only layers with
/// more than 128 output channels (the wide ones) see a difference.
constexpr Index block_rows_for_l2(long l2_bytes) {
  const Index rows = Index(l2_bytes / 8) / (kKc * Index(sizeof(float))) / kMr * kMr;
  return rows < 64 ? 64 : rows > 512 ? 512 : rows;
}
/// This CPU's block rows, from its L2 (cpu_info), read once.
inline Index block_rows() {
  static const Index rows = block_rows_for_l2(cpu_info().cache.l2);
  return rows;
}

/// What the kernel does with a finished tile T = alpha * A B, element (i, j):
/// C = (accumulate ? C : 0) + T + (bias ? bias[i] : 0), then max(C, 0) if relu.
struct Epilogue {
  float alpha = 1.0f;
  bool accumulate = true;
  const float* bias = nullptr;
  bool relu = false;
};

/// Floats that pack_a_whole writes for an m x k op(A).
inline Index packed_a_size(Index m, Index k) { return (m + kMr - 1) / kMr * kMr * k; }

#ifdef VGG_TARGET_AVX512F
/// The first `count` of 16 lanes (none for count <= 0). Plain integer code: the bf16 kernels, built
/// on any x86-64 target, use it too.
constexpr __mmask16 first_lanes(int count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
}
#endif

#ifdef VGG_FAST_KERNELS

/// How the kernel finds A(i, p): interleaved (a[p * stride + i]: a packed tile, or a transposed
/// row-major A read in place) or by rows (a[i * stride + p]: a row-major A read in place).
enum class ALayout { interleaved, rows };

/// T(i, j) = sum_p A(i, p) * b[p * b_step + j] for i < 8, j < 32; stores rows i < mr and columns
/// j < nr of C (row stride ldc) through the epilogue.
/// requires: A readable for i < 8 and b for j < 16 * Vectors at every p < kc (tails are padded by
/// packing).
/// Never inlined, so that every caller runs the same code: inlined copies were scheduled differently
/// per caller and measured anywhere from 8 % slower (conv3's backward) to 5 % faster (conv8's).
template <ALayout Layout, int Vectors = 2>
[[gnu::noinline]] inline void kernel_8x32(Index kc, const float* a, Index a_stride, const float* b, Index b_step,
                                          float* c, Index ldc, int mr, int nr, const Epilogue& e) {
  static_assert(Vectors == 1 || Vectors == 2);
  if constexpr (Vectors == 2) {
    if (nr <= 16) {  // half a tile: skip the empty vector (a 196-column image ends in a 4-column tile)
      kernel_8x32<Layout, 1>(kc, a, a_stride, b, b_step, c, ldc, mr, nr, e);
      return;
    }
  }
  __m512 acc[kMr][Vectors];
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i)
    for (int v = 0; v < Vectors; ++v) acc[i][v] = _mm512_setzero_ps();
  // Row pointers for the row layout: each row is read sequentially, one element per step.
  const float* rows[kMr];
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) rows[i] = a + (Layout == ALayout::rows ? i * a_stride : i);
  const Index a_step = Layout == ALayout::rows ? 1 : a_stride;
  for (Index p = 0; p < kc; ++p) {
    __m512 bv[Vectors];
    for (int v = 0; v < Vectors; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i) {
      const __m512 ai = _mm512_set1_ps(rows[i][p * a_step]);
      for (int v = 0; v < Vectors; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    b += b_step;
  }
  const __m512 alpha = _mm512_set1_ps(e.alpha), zero = _mm512_setzero_ps();
  __mmask16 masks[Vectors];
  for (int v = 0; v < Vectors; ++v) masks[v] = first_lanes(nr - 16 * v);
  const bool full = mr == kMr && nr == 16 * Vectors;
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) {
    if (i >= mr) break;
    for (int v = 0; v < Vectors; ++v) {
      float* out = c + i * ldc + 16 * v;
      __m512 r = _mm512_mul_ps(alpha, acc[i][v]);
      if (e.accumulate) r = _mm512_add_ps(r, full ? _mm512_loadu_ps(out) : _mm512_maskz_loadu_ps(masks[v], out));
      if (e.bias) r = _mm512_add_ps(r, _mm512_set1_ps(e.bias[i]));
      if (e.relu) r = _mm512_max_ps(zero, r);  // zero first: a NaN passes, as in torch's ReLU
      if (full)
        _mm512_storeu_ps(out, r);
      else
        _mm512_mask_storeu_ps(out, masks[v], r);
    }
  }
}

/// Packs rows [i0, i0 + mr) x depth [p0, p0 + kc) of op(A) into dst[p][8], zero beyond mr.
/// op(A)(i, p) is a[i * lda + p], or a[p * lda + i] when TransA.
template <bool TransA>
inline void pack_a(const float* a, Index lda, Index i0, int mr, Index p0, Index kc, float* dst) {
  for (Index p = 0; p < kc; ++p) {
    for (int i = 0; i < kMr; ++i) {
      float v = 0.0f;
      if (i < mr) v = TransA ? a[(p0 + p) * lda + i0 + i] : a[(i0 + i) * lda + p0 + p];
      dst[p * kMr + i] = v;
    }
  }
}

/// All of op(A) packed as gemm reads it pass by pass: pass p0 at dst + p0 * round_up(m, 8), its
/// tile i0 at + i0 * kc. For an A that many GEMMs share (a layer's weights across its bands).
/// With parts > 1, packs only share `part` of the tiles, so that threads can pack it together
/// (a 512 x 4608 layer's weights are 9 MB: packed by one thread, the others would wait for it).
template <bool TransA>
inline void pack_a_whole(const float* a, Index lda, Index m, Index k, float* dst, int part = 0, int parts = 1) {
  const Index m_padded = (m + kMr - 1) / kMr * kMr, tiles = m_padded / kMr;
  const Index first = tiles * part / parts, last = tiles * (part + 1) / parts;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0);
    for (Index i0 = first * kMr; i0 < last * kMr; i0 += kMr)
      pack_a<TransA>(a, lda, i0, int(std::min<Index>(kMr, m - i0)), p0, kc, dst + p0 * m_padded + i0 * kc);
  }
}


/// Packs depth [p0, p0 + kc) x columns [j0, j0 + nr) of a row-major B (k x n, ldb) into dst[p][32].
inline void pack_b_edge(const float* b, Index ldb, Index p0, Index kc, Index j0, int nr, float* dst) {
  const __mmask16 m0 = first_lanes(nr), m1 = first_lanes(nr - 16);
  for (Index p = 0; p < kc; ++p) {
    const float* src = b + (p0 + p) * ldb + j0;
    _mm512_store_ps(dst + p * kNr, _mm512_maskz_loadu_ps(m0, src));
    _mm512_store_ps(dst + p * kNr + 16, _mm512_maskz_loadu_ps(m1, src + 16));
  }
}

/// Packs op(B) = B^T for a row-major B stored n x k (ldb): dst[p][jj] = b[(j0 + jj) * ldb + p0 + p]
/// for jj < nr, 0 beyond, p < kc; by 16 x 16 register transposes.
inline void pack_bt(const float* b, Index ldb, Index p0, Index kc, Index j0, int nr, float* dst) {
  for (int half = 0; half < 2; ++half) {
    const int rows = std::min(16, nr - 16 * half);
    for (Index q = 0; q < kc; q += 16) {
      const __mmask16 depth = first_lanes(int(std::min<Index>(16, kc - q)));
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(depth, b + (j0 + 16 * half + i) * ldb + p0 + q) : _mm512_setzero_ps();
      transpose16x16(r);
      const int count = int(std::min<Index>(16, kc - q));
      for (int i = 0; i < count; ++i) _mm512_store_ps(dst + (q + i) * kNr + 16 * half, r[i]);
    }
  }
}

/// C (m x n, ldc) = out(alpha * op(A) * op(B)), where out is the epilogue: out.accumulate adds to
/// C's old values, out.bias adds bias[i] to row i, out.relu clamps at 0. A is m x k (lda) or, with
/// TransA, k x m; B is k x n (ldb) or, with TransB, n x k. Full 32-column panels of an untransposed B
/// are read in place (they already have the kernel's layout), as are some full tiles of A (below);
/// the rest is packed (a transposed B by register transposes), A once per depth pass.
/// With a_packed (from pack_a_whole, for A used by many calls), A is not read nor packed again.
/// requires: a_pack holds round_up(m, 8) * kKc floats and b_pack kKc * kNr floats, 64-byte aligned.
template <bool TransA, bool TransB = false>
inline void gemm(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c,
                 Index ldc, float* a_pack, float* b_pack, const Epilogue& out, const float* a_packed = nullptr) {
  const Index m_padded = (m + kMr - 1) / kMr * kMr;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0);
    // Depth passes after the first accumulate; the bias joins in the first, ReLU in the last.
    const Epilogue e{out.alpha, out.accumulate || p0 > 0, p0 == 0 ? out.bias : nullptr, out.relu && p0 + kc == k};
    // A tiles: a transposed A's full tiles are read in place, and so are a row-major A's when B is
    // transposed (few panels of B to amortise a pack over: measured faster); the rest is packed.
    constexpr bool rows_in_place = !TransA && TransB;
    float* const pass_pack = a_packed ? const_cast<float*>(a_packed + p0 * m_padded) : a_pack;
    for (Index i0 = 0; i0 < m && !a_packed; i0 += kMr) {
      const int mr = int(std::min<Index>(kMr, m - i0));
      if ((!TransA && !rows_in_place) || mr < kMr) pack_a<TransA>(a, lda, i0, mr, p0, kc, a_pack + i0 * kc);
    }
    // Rows in blocks of block_rows(): a block's A (an eighth of L2) and the pass's B panels then share L2. Only
    // for A B, the forward convolution's product: blocking the input gradient's (A^T B) and the
    // weight gradient's (A B^T, whose panels are packed once each) measured slower.
    const Index mc = TransA || TransB ? m : block_rows();
    for (Index ic = 0; ic < m; ic += mc) {
      const Index i_end = std::min(m, ic + mc);
      for (Index j0 = 0; j0 < n; j0 += kNr) {
        const int nr = int(std::min<Index>(kNr, n - j0));
        const float* bp = b + p0 * ldb + j0;
        Index b_step = ldb;
        if (TransB || nr < kNr) {
          if (TransB)
            pack_bt(b, ldb, p0, kc, j0, nr, b_pack);
          else
            pack_b_edge(b, ldb, p0, kc, j0, nr, b_pack);
          bp = b_pack;
          b_step = kNr;
        }
        for (Index i0 = ic; i0 < i_end; i0 += kMr) {
          const int mr = int(std::min<Index>(kMr, m - i0));
          Epilogue tile = e;
          if (tile.bias) tile.bias += i0;
          float* ct = c + i0 * ldc + j0;
          if (a_packed || mr < kMr || (!TransA && !rows_in_place))
            kernel_8x32<ALayout::interleaved>(kc, pass_pack + i0 * kc, kMr, bp, b_step, ct, ldc, mr, nr, tile);
          else if (TransA)
            kernel_8x32<ALayout::interleaved>(kc, a + p0 * lda + i0, lda, bp, b_step, ct, ldc, mr, nr, tile);
          else
            kernel_8x32<ALayout::rows>(kc, a + i0 * lda + p0, lda, bp, b_step, ct, ldc, mr, nr, tile);
        }
      }
    }
  }
}
#endif  // VGG_FAST_KERNELS

}  // namespace avx512
}  // namespace vgg::cpu
VGG_INTRINSICS_END
