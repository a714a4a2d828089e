#pragma once
// bf16 GEMM for mixed-precision training on CPUs with AVX512-BF16 (vdpbf16ps): operands rounded to
// bf16 as they are packed, products summed in fp32, C in fp32. One vdpbf16ps does the work of two
// fp32 FMAs (a pair of depth steps per 32-bit lane), and packed operands take half the bytes.
//
// Compiled on every x86-64 build, whatever -march says, with function target attributes; run only
// where cpu_info() reports avx512_bf16 (bf16_gemm_available()), so one binary serves CPUs with and
// without it. The layout is the fp32 kernel's (gemm_avx512.hpp): 8 x 32 tiles of C, A packed as
// [depth pair][8 rows], B as [depth pair][32 columns], each 32-bit element a (even, odd) depth pair.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "vgg/cpu/cpu_info.hpp"
#include "vgg/cpu/gemm_avx512.hpp"
#include "vgg/cpu/transpose16x16.hpp"

#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10) || \
                            (defined(__clang__) && __clang_major__ >= 11))
#define VGG_BF16_KERNELS 1
#include <immintrin.h>
#define VGG_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#endif

VGG_INTRINSICS_BEGIN
namespace vgg::cpu::bf16 {

using Index = std::ptrdiff_t;
inline constexpr int kMr = 8;
inline constexpr int kNr = 32;
/// Depth per pass, in elements: the fp32 kernel's, so that a convolution's column slices (one pass
/// each) and the weights packed whole line up on either path.
inline constexpr Index kKc = avx512::kKc;

/// The bf16 nearest to x, ties to even (as vcvtne2ps2bf16 and torch's float -> bfloat16 round);
/// NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if (std::isnan(x)) return std::uint16_t((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return std::uint16_t(bits >> 16);
}

inline float from_bf16(std::uint16_t h) {
  const std::uint32_t bits = std::uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

/// x rounded to bf16 and back: what the kernels multiply.
inline float round_to_bf16(float x) { return from_bf16(to_bf16(x)); }

/// Whether the bf16 kernels are built into this program and this CPU runs them.
inline bool bf16_gemm_available(const CpuInfo& cpu = cpu_info()) {
#ifdef VGG_BF16_KERNELS
  return cpu.avx512_bf16 && cpu.avx512bw && cpu.avx512vl;
#else
  (void)cpu;
  return false;
#endif
}

/// uint32 elements (depth pairs) that pack_a_whole writes for an m x k op(A): every pass's pairs,
/// the last one's odd element padded.
inline Index packed_a_size(Index m, Index k) {
  return (m + kMr - 1) / kMr * kMr * ((k + 1) / 2 + (k + kKc - 1) / kKc);
}
/// uint32 elements a B panel takes.
inline constexpr Index packed_b_size() { return kKc / 2 * kNr; }

/// uint32 elements of B (k x n) packed whole by pack_b_panels: every pass's panels.
inline constexpr Index packed_b_panels_size(Index k, Index n) { return (k + 1) / 2 * ((n + kNr - 1) / kNr * kNr); }

#ifdef VGG_BF16_KERNELS
using avx512::Epilogue;

inline std::uint32_t pair(float even, float odd) {
  return std::uint32_t(to_bf16(even)) | (std::uint32_t(to_bf16(odd)) << 16);
}

/// Row r's depths [2 q0, 2 q0 + 32) as 16 bf16 pairs, zero for rows >= valid and where the masks say.
VGG_TARGET_BF16 inline __m512i row_pair_words(const float* src, Index ld, int r, int valid, Index q0, __mmask16 lo_lanes,
                                              __mmask16 hi_lanes) {
  if (r >= valid) return _mm512_setzero_si512();
  const float* row = src + r * ld + 2 * q0;
  const __m512 lo = _mm512_maskz_loadu_ps(lo_lanes, row), hi = _mm512_maskz_loadu_ps(hi_lanes, row + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/// dst[q * R + r] = the depth pair (2q, 2q + 1) of row r, for rows r < R of a row-major matrix whose
/// depth runs along its rows (src + r * ld), q < ceil(kc / 2); zero for rows >= valid and depth >= kc.
/// Rows are rounded 32 floats at a time (vcvtne2ps2bf16, in order: word 2q is depth 2q), and each
/// 16 rows x 16 pairs block is then transposed in registers (R a multiple of 16: the linear layers'
/// weights, read once per forward, spent most of a full-width bf16 forward in a scalar transpose),
/// or through a small buffer (R = 8).
template <int R>
VGG_TARGET_BF16 inline void pack_row_pairs(const float* src, Index ld, int valid, Index kc, std::uint32_t* dst) {
  const Index pairs = (kc + 1) / 2;
  for (Index q0 = 0; q0 < pairs; q0 += 16) {
    const Index count = std::min<Index>(32, kc - 2 * q0);
    const __mmask16 lo_lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
    const __mmask16 hi_lanes = count >= 32 ? __mmask16(0xFFFF) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1u);
    const int n = int(std::min<Index>(16, pairs - q0));
    if constexpr (R % 16 == 0) {
      for (int r0 = 0; r0 < R; r0 += 16) {
        __m512 block[16];  // the fp32 packing's transpose, moving words as they are
        for (int r = 0; r < 16; ++r)
          block[r] = _mm512_castsi512_ps(row_pair_words(src, ld, r0 + r, valid, q0, lo_lanes, hi_lanes));
        transpose16x16(block);
        for (int qq = 0; qq < n; ++qq) _mm512_storeu_ps(dst + (q0 + qq) * R + r0, block[qq]);
      }
    } else {
      alignas(64) std::uint32_t block[R][16];
      for (int r = 0; r < R; ++r) _mm512_store_si512(block[r], row_pair_words(src, ld, r, valid, q0, lo_lanes, hi_lanes));
      for (int qq = 0; qq < n; ++qq)
        for (int r = 0; r < R; ++r) dst[(q0 + qq) * R + r] = block[r][qq];
    }
  }
}

/// Packs rows [i0, i0 + mr) x depth [p0, p0 + kc) of op(A) into dst[q][8] (q: depth pair), zero
/// beyond mr and beyond kc. op(A)(i, p) is a[i * lda + p], or a[p * lda + i] when TransA.
template <bool TransA>
inline void pack_a(const float* a, Index lda, Index i0, int mr, Index p0, Index kc, std::uint32_t* dst) {
  if constexpr (!TransA) {
    pack_row_pairs<kMr>(a + i0 * lda + p0, lda, mr, kc, dst);
  } else {
    const auto at = [&](int i, Index p) -> float { return i < mr && p < kc ? a[(p0 + p) * lda + i0 + i] : 0.0f; };
    for (Index q = 0; q < (kc + 1) / 2; ++q)
      for (int i = 0; i < kMr; ++i) dst[q * kMr + i] = pair(at(i, 2 * q), at(i, 2 * q + 1));
  }
}

/// All of op(A) packed, pass by pass: pass p0 at dst + (p0 / 2) * round_up(m, 8), its tile i0 at
/// + i0 * ceil(kc / 2). For weights shared by many GEMMs (a layer's bands). With parts > 1, packs
/// only share `part` of the tiles, so that threads can pack it together.
template <bool TransA>
inline void pack_a_whole(const float* a, Index lda, Index m, Index k, std::uint32_t* dst, int part = 0,
                         int parts = 1) {
  const Index m_padded = (m + kMr - 1) / kMr * kMr, tiles = m_padded / kMr;
  const Index first = tiles * part / parts, last = tiles * (part + 1) / parts;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2;
    for (Index i0 = first * kMr; i0 < last * kMr; i0 += kMr)
      pack_a<TransA>(a, lda, i0, int(std::min<Index>(kMr, m - i0)), p0, kc, dst + p0 / 2 * m_padded + i0 * pairs);
  }
}

/// Packs depth [p0, p0 + kc) x columns [j0, j0 + nr) of a row-major B (k x n, ldb) into dst[q][32]:
/// two rows of 16 columns rounded together (vcvtne2ps2bf16), their halves interleaved into pairs.
VGG_TARGET_BF16 inline void pack_b(const float* b, Index ldb, Index p0, Index kc, Index j0, int nr,
                                   std::uint32_t* dst) {
  // vcvtne2ps2bf16(hi, lo) puts lo's 16 values in words 0-15 and hi's in 16-31; a pair for column j
  // wants lo[j] in word 2j and hi[j] in word 2j + 1.
  alignas(64) static constexpr std::uint16_t interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(interleave);
  for (int half = 0; half < 2; ++half) {
    const int count = std::clamp(nr - 16 * half, 0, 16);
    const __mmask16 lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
    for (Index q = 0; q < (kc + 1) / 2; ++q) {
      const Index p = p0 + 2 * q;
      const float* even = b + p * ldb + j0 + 16 * half;
      const __m512 lo = _mm512_maskz_loadu_ps(lanes, even);
      const __m512 hi = 2 * q + 1 < kc ? _mm512_maskz_loadu_ps(lanes, even + ldb) : _mm512_setzero_ps();
      const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      _mm512_store_si512(dst + q * kNr + 16 * half, _mm512_permutexvar_epi16(order, words));
    }
  }
}

/// One depth pair of every B panel across n columns: rows `even` and `odd` (null: past the depth,
/// zero) of a row-major B, panel t's row at dst + t * panel_stride; pack_b's words, bit for bit.
VGG_TARGET_BF16 inline void pack_b_pair_row(const float* even, const float* odd, Index n, std::uint32_t* dst,
                                            Index panel_stride) {
  alignas(64) static constexpr std::uint16_t interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(interleave);
  for (Index j = 0; j < n; j += 16) {
    const Index count = std::min<Index>(16, n - j);
    const __mmask16 lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
    const __m512 lo = _mm512_maskz_loadu_ps(lanes, even + j);
    const __m512 hi = odd ? _mm512_maskz_loadu_ps(lanes, odd + j) : _mm512_setzero_ps();
    _mm512_store_si512(dst + j / kNr * panel_stride + j % kNr,
                       _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo)));
  }
  if (n % kNr != 0 && n % kNr <= 16)  // the last panel's second half: columns past n, zero as in pack_b
    _mm512_store_si512(dst + n / kNr * panel_stride + 16, _mm512_setzero_si512());
}

/// All of a row-major B (k x n, ldb) packed as the GEMM packs it, pass by pass: pass p0 at
/// dst + (p0 / 2) * round_up(n, 32), its panel j0 / 32 at + j0 * ceil(kc / 2) (depth pairs of 32
/// words). The layout gemm's b_packed takes.
inline void pack_b_panels(const float* b, Index ldb, Index k, Index n, std::uint32_t* dst) {
  const Index n_padded = (n + kNr - 1) / kNr * kNr;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2;
    for (Index q = 0; q < pairs; ++q) {
      const float* even = b + (p0 + 2 * q) * ldb;
      pack_b_pair_row(even, 2 * q + 1 < kc ? even + ldb : nullptr, n, dst + p0 / 2 * n_padded + q * kNr,
                      pairs * kNr);
    }
  }
}

/// Packs op(B) = B^T for a row-major B stored n x k (ldb): dst[q][jj] holds depth pair q of row j0 + jj.
inline void pack_bt(const float* b, Index ldb, Index p0, Index kc, Index j0, int nr, std::uint32_t* dst) {
  pack_row_pairs<kNr>(b + j0 * ldb + p0, ldb, nr, kc, dst);
}

/// All of op(B) = B^T (B stored n x k, ldb) packed as the GEMM packs it: pack_b_panels' layout.
inline void pack_bt_panels(const float* b, Index ldb, Index k, Index n, std::uint32_t* dst) {
  const Index n_padded = (n + kNr - 1) / kNr * kNr;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2;
    for (Index j0 = 0; j0 < n; j0 += kNr)
      pack_bt(b, ldb, p0, kc, j0, int(std::min<Index>(kNr, n - j0)), dst + p0 / 2 * n_padded + j0 * pairs);
  }
}

/// One row of k floats as bf16 depth pairs, in order (dst[q] = (2q, 2q + 1); the odd tail's second
/// half zero): the words pack_row_pairs gives a row before it interleaves rows.
VGG_TARGET_BF16 inline void pack_row(const float* src, Index k, std::uint32_t* dst) {
  for (Index p = 0; p < k; p += 32) {
    const Index count = std::min<Index>(32, k - p);
    const __mmask16 lo_lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
    const __mmask16 hi_lanes = count >= 32   ? __mmask16(0xFFFF)
                               : count <= 16 ? __mmask16(0)
                                             : __mmask16((1u << (count - 16)) - 1u);
    const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi_lanes, src + p + 16),
                                                       _mm512_maskz_loadu_ps(lo_lanes, src + p));
    _mm512_mask_storeu_epi32(dst + p / 2, __mmask16(count >= 32 ? 0xFFFF : (1u << ((count + 1) / 2)) - 1u), words);
  }
}

/// C tile (rows < mr, columns < nr, ldc) = epilogue(sum over `pairs` depth pairs of A and B). A is
/// packed ([pair][8 rows]), or with RowsA eight rows of pairs a_stride words apart (row i's pair q at
/// a[i * a_stride + q]; all eight read, rows past mr only not stored).
template <int Vectors = 2, bool RowsA = false>
[[gnu::noinline]] VGG_TARGET_BF16 inline void kernel_8x32(Index pairs, const std::uint32_t* a, const std::uint32_t* b,
                                                          float* c, Index ldc, int mr, int nr, const Epilogue& e,
                                                          Index a_stride = 0) {
  if constexpr (Vectors == 2) {
    if (nr <= 16) {
      kernel_8x32<1, RowsA>(pairs, a, b, c, ldc, mr, nr, e, a_stride);
      return;
    }
  }
  __m512 acc[kMr][Vectors];
  for (int i = 0; i < kMr; ++i)
    for (int v = 0; v < Vectors; ++v) acc[i][v] = _mm512_setzero_ps();
  for (Index q = 0; q < pairs; ++q) {
    __m512bh bv[Vectors];
    for (int v = 0; v < Vectors; ++v) bv[v] = (__m512bh)_mm512_load_si512(b + q * kNr + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(RowsA ? a[i * a_stride + q] : a[q * kMr + i]));
      for (int v = 0; v < Vectors; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
    }
  }
  const __m512 alpha = _mm512_set1_ps(e.alpha), zero = _mm512_setzero_ps();
  for (int i = 0; i < mr; ++i)
    for (int v = 0; v < Vectors; ++v) {
      const int count = std::clamp(nr - 16 * v, 0, 16);
      const __mmask16 lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
      float* out = c + i * ldc + 16 * v;
      __m512 r = _mm512_mul_ps(alpha, acc[i][v]);
      if (e.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(lanes, out));
      if (e.bias) r = _mm512_add_ps(r, _mm512_set1_ps(e.bias[i]));
      if (e.relu) r = _mm512_max_ps(zero, r);  // zero first: a NaN passes, as in the fp32 kernel
      _mm512_mask_storeu_ps(out, lanes, r);
    }
}

/// C (m x n, ldc) = out(alpha * op(A) * op(B)) with bf16 products and fp32 sums; the epilogue and
/// the operands' layouts are gemm_avx512.hpp's gemm. With a_packed (from pack_a_whole), A is not
/// read nor packed again; with b_packed (pack_b_panels' layout, or pack_bt_panels' for TransB), B
/// is not read nor packed. requires: bf16_gemm_available(); a_pack holds round_up(m, 8) * kKc / 2
/// (unless a_packed) and b_pack packed_b_size() (unless b_packed) uint32s, 64-byte aligned.
template <bool TransA, bool TransB = false>
inline void gemm(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c, Index ldc,
                 std::uint32_t* a_pack, std::uint32_t* b_pack, const Epilogue& out,
                 const std::uint32_t* a_packed = nullptr, const std::uint32_t* b_packed = nullptr) {
  const Index m_padded = (m + kMr - 1) / kMr * kMr, n_padded = (n + kNr - 1) / kNr * kNr;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2;
    const Epilogue e{out.alpha, out.accumulate || p0 > 0, p0 == 0 ? out.bias : nullptr, out.relu && p0 + kc == k};
    const std::uint32_t* pass = a_packed ? a_packed + p0 / 2 * m_padded : a_pack;
    if (!a_packed)
      for (Index i0 = 0; i0 < m; i0 += kMr)
        pack_a<TransA>(a, lda, i0, int(std::min<Index>(kMr, m - i0)), p0, kc, a_pack + i0 * pairs);
    for (Index j0 = 0; j0 < n; j0 += kNr) {
      const int nr = int(std::min<Index>(kNr, n - j0));
      const std::uint32_t* panel = b_packed ? b_packed + p0 / 2 * n_padded + j0 * pairs : b_pack;
      if (!b_packed) {
        if constexpr (TransB)
          pack_bt(b, ldb, p0, kc, j0, nr, b_pack);
        else
          pack_b(b, ldb, p0, kc, j0, nr, b_pack);
      }
      for (Index i0 = 0; i0 < m; i0 += kMr) {
        Epilogue tile = e;
        if (tile.bias) tile.bias += i0;
        kernel_8x32(pairs, pass + i0 * pairs, panel, c + i0 * ldc + j0, ldc, int(std::min<Index>(kMr, m - i0)), nr,
                    tile);
      }
    }
  }
}

/// C (m x n, ldc) = out(alpha * A * B) with A given as bf16 pair rows (row i's depth pair q at
/// a_rows[i * a_stride + q], pack_row's words) and B as pack_b_panels' panels: nothing packed here.
/// The same sums as gemm, in the same order: each output is the same pairs of products, whichever
/// operand is broadcast. For a product whose depth runs along both operands' rows (a weight
/// gradient, columns x output gradient^T), where packing A by pairs would transpose it.
/// requires: bf16_gemm_available(); round_up(m, 8) rows of a_rows readable.
inline void gemm_rows_a(Index m, Index n, Index k, const std::uint32_t* a_rows, Index a_stride,
                        const std::uint32_t* b_packed, float* c, Index ldc, const Epilogue& out) {
  const Index n_padded = (n + kNr - 1) / kNr * kNr;
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2;
    const Epilogue e{out.alpha, out.accumulate || p0 > 0, p0 == 0 ? out.bias : nullptr, out.relu && p0 + kc == k};
    for (Index j0 = 0; j0 < n; j0 += kNr) {
      const int nr = int(std::min<Index>(kNr, n - j0));
      for (Index i0 = 0; i0 < m; i0 += kMr) {
        Epilogue tile = e;
        if (tile.bias) tile.bias += i0;
        kernel_8x32<2, true>(pairs, a_rows + i0 * a_stride + p0 / 2, b_packed + p0 / 2 * n_padded + j0 * pairs,
                             c + i0 * ldc + j0, ldc, int(std::min<Index>(kMr, m - i0)), nr, tile, a_stride);
      }
    }
  }
}
#endif  // VGG_BF16_KERNELS

}  // namespace vgg::cpu::bf16
VGG_INTRINSICS_END
