#pragma once
// CPU kernel: y = x W^T + b for a few rows of x (a small inference batch), reading W once, row by
// row, as it is stored (out x in), with nothing packed.
//
// Why not the GEMM: with 8 rows or fewer, a fully connected layer is bound by reading its weights
// (full-width VGG-11's classifier: 480 MB of fp32 for 8 images). The GEMM packs W^T into panels
// pass by pass: a transpose per element and 32 rows read 1 KiB at a time.
//
// Here each thread's rows of W stream past x two at a time, every row of x meeting them in
// registers (16 dot products); x (8 rows, 800 KB for the first classifier layer) stays in L2. The
// rows are prefetched kPrefetchBytes ahead: with the loads among 16 FMAs each, the hardware alone
// kept too few misses in flight (20 GB/s of W on 2 cores of the Xeon family 6 model 207, 26-34
// with the prefetch; a plain read of the same rows: 50).
// bf16 mode rounds W's rows to bf16 in registers and x once per call, and sums the bf16 products in
// fp32 (vdpbf16ps), as the bf16 GEMM does.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "vgg/cpu/gemm_bf16.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu::few_rows {

using Index = std::ptrdiff_t;
/// Rows of x up to which a linear layer's forward reads W row by row (linear_forward); above it
/// the GEMM, whose work grows with the rows, not its reading of W.
inline constexpr int kMaxRows = 8;
/// How far ahead of the loads each row of W is prefetched: 1-4 KiB measured equal within noise (the
/// Xeon family 6 model 207), 2 KiB taken from the middle; DRAM latency times bandwidth per stream.
inline constexpr Index kPrefetchBytes = 2048;

#if defined(VGG_FAST_KERNELS) || defined(VGG_BF16_KERNELS)
namespace detail {
/// out[i][0] and out[i][1] = the lane sums of a0[i] and a1[i]: both dot_rows_* end so.
template <int N>
VGG_TARGET_AVX512F inline void reduce_rows(const __m512 a0[N], const __m512 a1[N], float out[N][2]) {
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    out[i][0] = _mm512_reduce_add_ps(a0[i]);
    out[i][1] = _mm512_reduce_add_ps(a1[i]);
  }
}
}  // namespace detail
#endif

#ifdef VGG_FAST_KERNELS
namespace detail {
/// out[i][r] = sum_p x[i][p] * w_r[p], p < k, for rows w_0, w_1 (w_1 may equal w_0) and N rows of x.
template <int N>
inline void dot_rows_fp32(const float* x, Index ldx, const float* w0, const float* w1, Index k, float out[N][2]) {
  __m512 a0[N] = {}, a1[N] = {};  // zeros
  const auto step = [&](Index p, __mmask16 lanes) {
    _mm_prefetch(reinterpret_cast<const char*>(w0 + p) + kPrefetchBytes, _MM_HINT_T0);  // one line per row
    _mm_prefetch(reinterpret_cast<const char*>(w1 + p) + kPrefetchBytes, _MM_HINT_T0);
    const __m512 v0 = _mm512_maskz_loadu_ps(lanes, w0 + p), v1 = _mm512_maskz_loadu_ps(lanes, w1 + p);
#pragma GCC unroll 8  // the accumulators stay in registers only if unrolled
    for (int i = 0; i < N; ++i) {
      const __m512 xi = _mm512_maskz_loadu_ps(lanes, x + i * ldx + p);
      a0[i] = _mm512_fmadd_ps(v0, xi, a0[i]);
      a1[i] = _mm512_fmadd_ps(v1, xi, a1[i]);
    }
  };
  Index p = 0;
  for (; p + 16 <= k; p += 16) step(p, __mmask16(0xFFFF));
  if (p < k) step(p, avx512::first_lanes(int(k - p)));
  reduce_rows<N>(a0, a1, out);
}
}  // namespace detail
#endif

#ifdef VGG_BF16_KERNELS
/// x's rows as bf16 depth pairs (pack_row's words), row i at dst + i * pairs(k), for linear's bf16 mode.
inline Index pairs(Index k) { return (k + 1) / 2; }
VGG_TARGET_BF16 inline void pack_rows_bf16(const float* x, Index ldx, int n, Index k, std::uint32_t* dst) {
  for (int i = 0; i < n; ++i) bf16::pack_row(x + i * ldx, k, dst + i * pairs(k));
}

namespace detail {
/// One step of dot_rows_bf16: depths [p, p + 32) of both rows, where the masks allow. (A function,
/// not a lambda: a lambda would not inherit the target attribute.)
template <int N>
[[gnu::always_inline]] VGG_TARGET_BF16 inline void dot_step_bf16(const std::uint32_t* x_pairs, Index x_stride,
                                                                 const float* w0, const float* w1, Index p,
                                                                 __mmask16 lo, __mmask16 hi, __mmask16 words,
                                                                 __m512 a0[N], __m512 a1[N]) {
  for (const float* row : {w0 + p, w0 + p + 16, w1 + p, w1 + p + 16})  // two lines per row
    _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
  const __m512bh v0 = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, w0 + p + 16), _mm512_maskz_loadu_ps(lo, w0 + p));
  const __m512bh v1 = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, w1 + p + 16), _mm512_maskz_loadu_ps(lo, w1 + p));
#pragma GCC unroll 8  // the accumulators stay in registers only if unrolled
  for (int i = 0; i < N; ++i) {
    const __m512bh xi = (__m512bh)_mm512_maskz_loadu_epi32(words, x_pairs + i * x_stride + p / 2);
    a0[i] = _mm512_dpbf16_ps(a0[i], v0, xi);
    a1[i] = _mm512_dpbf16_ps(a1[i], v1, xi);
  }
}

/// dot_rows_fp32 with bf16 products: w's rows rounded to bf16 32 at a time, x's rows given as pairs
/// (row i at x_pairs + i * x_stride).
template <int N>
VGG_TARGET_BF16 inline void dot_rows_bf16(const std::uint32_t* x_pairs, Index x_stride, const float* w0,
                                          const float* w1, Index k, float out[N][2]) {
  __m512 a0[N] = {}, a1[N] = {};  // zeros
  Index p = 0;
  for (; p + 32 <= k; p += 32)
    dot_step_bf16<N>(x_pairs, x_stride, w0, w1, p, __mmask16(0xFFFF), __mmask16(0xFFFF), __mmask16(0xFFFF), a0, a1);
  if (p < k) {
    const int count = int(k - p);
    dot_step_bf16<N>(x_pairs, x_stride, w0, w1, p, avx512::first_lanes(count),
                     avx512::first_lanes(count - 16), avx512::first_lanes((count + 1) / 2), a0, a1);
  }
  reduce_rows<N>(a0, a1, out);
}
}  // namespace detail
#endif

#ifdef VGG_FAST_KERNELS
/// y[i][o] = bias[o] + x[i] . w[o] for i < n, o in [o0, o1): x n x k (ldx), w out x k (row-major,
/// PyTorch's layout), y n x ldy; bias may be null. With x_pairs (pack_rows_bf16 of x), bf16
/// products summed in fp32 (requires bf16::bf16_gemm_available()); else fp32. With relu, max(y, 0)
/// (a NaN passes, as in the GEMM path's ReLU).
/// requires: 1 <= n <= kMaxRows.
inline void linear(const float* x, Index ldx, int n, const float* w, Index k, const float* bias, float* y, Index ldy,
                   Index o0, Index o1, [[maybe_unused]] const std::uint32_t* x_pairs = nullptr, bool relu = false) {
  const auto run = [&]<int N>() {
    for (Index o = o0; o < o1; o += 2) {
      const float* w0 = w + o * k;
      const float* w1 = o + 1 < o1 ? w0 + k : w0;  // an odd last row is read twice, kept once
      float out[N][2];
#ifdef VGG_BF16_KERNELS
      if (x_pairs)
        detail::dot_rows_bf16<N>(x_pairs, pairs(k), w0, w1, k, out);
      else
#endif
        detail::dot_rows_fp32<N>(x, ldx, w0, w1, k, out);
      for (int i = 0; i < N; ++i)
        for (int r = 0; r < 2 && o + r < o1; ++r) {
          const float v = (bias ? bias[o + r] : 0.0f) + out[i][r];
          y[i * ldy + o + r] = relu ? std::max(v, 0.0f) : v;
        }
    }
  };
  switch (n) {
    case 1: run.template operator()<1>(); break;
    case 2: run.template operator()<2>(); break;
    case 3: run.template operator()<3>(); break;
    case 4: run.template operator()<4>(); break;
    case 5: run.template operator()<5>(); break;
    case 6: run.template operator()<6>(); break;
    case 7: run.template operator()<7>(); break;
    default: run.template operator()<8>(); break;
  }
  static_assert(kMaxRows == 8, "linear's dispatch covers 1 to 8 rows");
}
#endif

}  // namespace vgg::cpu::few_rows
VGG_INTRINSICS_END
