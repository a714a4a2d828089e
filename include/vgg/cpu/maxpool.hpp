#pragma once
// CPU kernel: 2x2 max-pool, stride 2, PyTorch's floor rule (a trailing odd row/column is dropped).
// Plain loops on every target (the _plain functions); on AVX-512 targets the unsuffixed functions
// take 16 windows per step, splitting even and odd columns with two-source permutes (the plain
// loops' stride-2 accesses made the backward pass 8% of a training step).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vgg/cpu/gemm_avx512.hpp"
#include "vgg/cpu/parallel.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

namespace detail {
/// plane_op(p) for p in [0, planes), split across threads.
template <class PlaneOp>
inline void for_each_plane(long planes, int threads, PlaneOp plane_op) {
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(planes, omp_get_thread_num(), omp_get_num_threads());
    for (long p = mine.begin; p < mine.end; ++p) plane_op(p);
  }
}
}  // namespace detail

/// The element of a 2x2 window (0..3: top left, top right, bottom left, bottom right) that PyTorch's
/// max_pool2d takes: it scans them in that order keeping `v > max || isnan(v)`, so the first maximum
/// wins ties, a NaN wins over any number, and a later NaN over an earlier one (checked with torch
/// 1.13: the gradient of [[1, nan], [nan, 3]] goes to the bottom left). max receives the winner's value.
inline int pool_window_winner(float a, float b, float c, float d, float& max) {
  int winner = 0;
  max = a;
  const float rest[3] = {b, c, d};
  for (int k = 0; k < 3; ++k)
    if (rest[k] > max || std::isnan(rest[k])) {
      max = rest[k];
      winner = k + 1;
    }
  return winner;
}

/// The maximum of a 2x2 window as PyTorch takes it (pool_window_winner): NaN if any element is NaN.
inline float pool_window_max(float a, float b, float c, float d) {
  float m = a;
  m = b > m || std::isnan(b) ? b : m;
  m = c > m || std::isnan(c) ? c : m;
  return d > m || std::isnan(d) ? d : m;
}

/// Windows [j0, j1) of the pooled row whose input rows are r0 and r1.
inline void maxpool2x2_windows_plain(const float* r0, const float* r1, float* out, int j0, int j1) {
  for (int j = j0; j < j1; ++j) out[j] = pool_window_max(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
}

/// Output rows [i0, i1) of one h x w plane: out[i][j] = max of in[2i..2i+1][2j..2j+1].
inline void maxpool2x2_rows_plain(const float* in, float* out, int w, int i0, int i1) {
  const int ow = w / 2;
  for (int i = i0; i < i1; ++i) {
    const float* r0 = in + long(2 * i) * w;
    maxpool2x2_windows_plain(r0, r0 + w, out + long(i) * ow, 0, ow);
  }
}

/// y[p][i][j] = max of x[p][2i..2i+1][2j..2j+1] for `planes` planes of h x w.
/// requires: y holds planes x (h/2) x (w/2) floats.
inline void maxpool2x2_forward_plain(const float* x, float* y, long planes, int h, int w, int threads) {
  const int oh = h / 2, ow = w / 2;
  detail::for_each_plane(planes, threads,
                         [&](long p) { maxpool2x2_rows_plain(x + p * h * w, y + p * oh * ow, w, 0, oh); });
}

/// Backward of the 2x2 max-pool over one h x w plane: each output gradient goes to the element that
/// PyTorch picks (pool_window_winner: the first maximum in row-major order, or the last NaN). Rows/
/// columns dropped by the floor rule get zero gradient. With relu_mask (x is a ReLU output), windows
/// whose maximum is 0 pass nothing (a NaN maximum passes, as through torch's ReLU): dx is then the
/// gradient behind that ReLU too. Returns the sum of dx.
/// Branch-free: which of the four wins is random, so a branch per comparison would mispredict
/// about half the time (it made this the costliest loop of a training step).
inline float maxpool2x2_backward_plane_plain(const float* x, const float* dy, float* dx, int h, int w, bool relu_mask) {
  const int oh = h / 2, ow = w / 2;
  float sum = 0.0f;
  for (int i = 0; i < oh; ++i) {
    const float* r0 = x + long(2 * i) * w;
    const float* r1 = r0 + w;
    float* d0 = dx + long(2 * i) * w;
    float* d1 = d0 + w;
    const float* gi = dy + long(i) * ow;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < ow; ++j) {
      const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      // PyTorch's scan (pool_window_winner): a later element takes over when greater, or NaN; the
      // last to take over wins. Selects, not branches (the omp simd loop blends them).
      const bool to_b = b > a || std::isnan(b);
      const float ab = to_b ? b : a;
      const bool to_c = c > ab || std::isnan(c);
      const float abc = to_c ? c : ab;
      const bool to_d = d > abc || std::isnan(d);
      const float m = to_d ? d : abc;
      const float grad = relu_mask && m <= 0.0f ? 0.0f : gi[j];
      d0[2 * j] = to_b || to_c || to_d ? 0.0f : grad;
      d0[2 * j + 1] = to_b && !to_c && !to_d ? grad : 0.0f;
      d1[2 * j] = to_c && !to_d ? grad : 0.0f;
      d1[2 * j + 1] = to_d ? grad : 0.0f;
      sum += grad;
    }
    if (w % 2) d0[w - 1] = d1[w - 1] = 0.0f;  // the column the floor rule dropped
  }
  if (h % 2) std::fill(dx + long(h - 1) * w, dx + long(h) * w, 0.0f);  // the dropped row
  return sum;
}

/// maxpool2x2_backward_plane_plain over `planes` planes, split across threads.
/// requires: dx holds planes x h x w floats.
inline void maxpool2x2_backward_plain(const float* x, const float* dy, float* dx, long planes, int h, int w, int threads,
                                      bool relu_mask = false) {
  const long in = long(h) * w, out = long(h / 2) * (w / 2);
  detail::for_each_plane(planes, threads, [&](long p) {
    maxpool2x2_backward_plane_plain(x + p * in, dy + p * out, dx + p * in, h, w, relu_mask);
  });
}

/// Winner masks of a fused 2x2 max-pool. A pooled row of `ow` windows has n = ceil(ow / 16)
/// 32-bit words for the windows' top row, then n for the bottom row; in word k, bits 2l and 2l + 1
/// say that the left and the right element of window 16k + l equal the window's maximum (the bits
/// sit where the elements sit in the row: that is how the forward kernel's comparisons produce
/// them). The winner is the first such element in row-major order, as in PyTorch. No bit is set
/// where the maximum is not positive (the ReLU before the pool then passes no gradient). In a window
/// holding a NaN only PyTorch's winner has its bit (pool_window_winner: the last NaN), whatever the
/// sign: a NaN passes torch's ReLU backward.
constexpr long winner_row_words(int w) { return (long(w / 2) + 15) / 16 * 2; }  // uint32 words per pooled row
constexpr long winner_plane_words(int h, int w) { return long(h / 2) * winner_row_words(w); }
/// uint32 words of one image's winner masks: `channels` planes, rounded to whole cache lines.
constexpr long winner_image_words(int channels, int h, int w) {
  return (long(channels) * winner_plane_words(h, w) + 15) / 16 * 16;
}

/// Bits 0..15 of v spread to the even bits of a word (the inverse of even_bits).
inline std::uint32_t spread_to_even_bits(std::uint32_t v) {
#if defined(VGG_FAST_KERNELS) && defined(__BMI2__)
  return _pdep_u32(v, 0x55555555u);
#else
  v &= 0x0000FFFFu;
  v = (v | v << 8) & 0x00FF00FFu;
  v = (v | v << 4) & 0x0F0F0F0Fu;
  v = (v | v << 2) & 0x33333333u;
  return (v | v << 1) & 0x55555555u;
#endif
}

/// The even bits of a 32-bit word, packed (the left elements' bits of 16 windows).
inline std::uint32_t even_bits(std::uint32_t v) {
#if defined(VGG_FAST_KERNELS) && defined(__BMI2__)
  return _pext_u32(v, 0x55555555u);
#else
  v &= 0x55555555u;
  v = (v | v >> 1) & 0x33333333u;
  v = (v | v >> 2) & 0x0F0F0F0Fu;
  v = (v | v >> 4) & 0x00FF00FFu;
  return (v | v >> 8) & 0x0000FFFFu;
#endif
}

/// Windows [0, count) of a pooled row whose input rows, before a ReLU, are top and bottom, one at a
/// time: pooled[l] = relu(the window's maximum), and the winner bits (layout above) of PyTorch's
/// winner where the ReLU passes the gradient. The vector kernels' path for windows holding a NaN.
inline void relu_pool_windows_scalar(const float* top, const float* bottom, int count, float* pooled,
                                     std::uint32_t& top_bits, std::uint32_t& bottom_bits) {
  top_bits = bottom_bits = 0;
  for (int l = 0; l < count; ++l) {
    float m = 0;
    const int winner = pool_window_winner(top[2 * l], top[2 * l + 1], bottom[2 * l], bottom[2 * l + 1], m);
    const bool live = !(m <= 0.0f);  // NaN included
    pooled[l] = live ? m : 0.0f;
    if (live) (winner < 2 ? top_bits : bottom_bits) |= 1u << (2 * l + winner % 2);
  }
}

#ifdef VGG_FAST_KERNELS
namespace avx512 {
/// Lanes whose window (elements a, b, c, d) holds a NaN. The vector kernels test this once per 16
/// windows and leave NaN windows to a rare path: propagating NaN in every max would cost a blend each.
inline __mmask16 nan_windows(__m512 a, __m512 b, __m512 c, __m512 d) {
  return _kor_mask16(_mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q), _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q));
}

/// Winner masks ka..kd (first maximum) corrected in the windows `nan` that hold a NaN: PyTorch's
/// winner there is the last NaN, and the ReLU mask `live` passes it.
inline void route_to_last_nan(__m512 a, __m512 b, __m512 c, __m512 d, __mmask16 nan, __mmask16& live, __mmask16& ka,
                              __mmask16& kb, __mmask16& kc, __mmask16& kd) {
  const unsigned na = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), nb = _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
  const unsigned nc = _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q), nd = _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
  const unsigned keep = ~unsigned(nan);
  live = __mmask16(live | nan);
  ka = __mmask16((ka & keep) | (na & ~(nb | nc | nd)));
  kb = __mmask16((kb & keep) | (nb & ~(nc | nd)));
  kc = __mmask16((kc & keep) | (nc & ~nd));
  kd = __mmask16((kd & keep) | nd);
}

/// 16 windows given by their elements a (top left), b (top right), c (bottom left), d (bottom
/// right), one window per lane, before the ReLU (lanes outside `valid` ignored): returns the pooled
/// relu(max) (PyTorch's: NaN in a window holding one), and the windows' winner bits as
/// maxpool2x2_rows_winners sets them (every element equal to a positive maximum; in a NaN window
/// PyTorch's winner only), window l at bits 2l, 2l + 1 of `top` and `bottom`. For an output that is
/// produced window by window (the Winograd output transform: one 2x2 tile is one window).
inline __m512 relu_pool_winner_bits(__m512 a, __m512 b, __m512 c, __m512 d, __mmask16 valid, std::uint32_t& top,
                                    std::uint32_t& bottom) {
  __m512 m = _mm512_max_ps(_mm512_max_ps(a, b), _mm512_max_ps(c, d));
  __mmask16 live = _mm512_mask_cmp_ps_mask(valid, m, _mm512_setzero_ps(), _CMP_GT_OQ);
  __mmask16 ka = _mm512_mask_cmp_ps_mask(live, a, m, _CMP_EQ_OQ), kb = _mm512_mask_cmp_ps_mask(live, b, m, _CMP_EQ_OQ);
  __mmask16 kc = _mm512_mask_cmp_ps_mask(live, c, m, _CMP_EQ_OQ), kd = _mm512_mask_cmp_ps_mask(live, d, m, _CMP_EQ_OQ);
  const __mmask16 nan = __mmask16(valid & nan_windows(a, b, c, d));
  if (__builtin_expect(nan != 0, 0)) {
    route_to_last_nan(a, b, c, d, nan, live, ka, kb, kc, kd);
    ka &= live;  // a NaN in a lane outside `valid` has no window
    kb &= live;
    kc &= live;
    kd &= live;
    m = _mm512_mask_add_ps(m, nan, _mm512_add_ps(a, b), _mm512_add_ps(c, d));  // a NaN
  }
  top = spread_to_even_bits(ka) | spread_to_even_bits(kb) << 1;
  bottom = spread_to_even_bits(kc) | spread_to_even_bits(kd) << 1;
  return _mm512_maskz_mov_ps(live, m);
}

/// Even and odd elements of the 32 floats (lo, hi), and the inverse.
inline __m512 evens(__m512 lo, __m512 hi) {
  return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), hi);
}
inline __m512 odds(__m512 lo, __m512 hi) {
  return _mm512_permutex2var_ps(lo, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), hi);
}
inline __m512 interleave_lo(__m512 even, __m512 odd) {
  return _mm512_permutex2var_ps(even, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), odd);
}
inline __m512 interleave_hi(__m512 even, __m512 odd) {
  return _mm512_permutex2var_ps(even, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
                                odd);
}

/// Sends the gradients g of 16 windows to their winners: the top row's 32 columns at top, the bottom
/// row's at bottom (lanes lo and hi of each row's two halves stored); element c of window l gets
/// g[l] where bit l of its mask (top left, top right, bottom left, bottom right) is set, else 0.
inline void scatter_to_winners(float* top, float* bottom, __mmask16 lo, __mmask16 hi, __m512 g, __mmask16 top_left,
                               __mmask16 top_right, __mmask16 bottom_left, __mmask16 bottom_right) {
  const __m512 a = _mm512_maskz_mov_ps(top_left, g), b = _mm512_maskz_mov_ps(top_right, g);
  const __m512 c = _mm512_maskz_mov_ps(bottom_left, g), d = _mm512_maskz_mov_ps(bottom_right, g);
  _mm512_mask_storeu_ps(top, lo, interleave_lo(a, b));
  _mm512_mask_storeu_ps(top + 16, hi, interleave_hi(a, b));
  _mm512_mask_storeu_ps(bottom, lo, interleave_lo(c, d));
  _mm512_mask_storeu_ps(bottom + 16, hi, interleave_hi(c, d));
}
}  // namespace avx512
#endif

/// maxpool2x2_rows_plain, 16 windows per step where built.
inline void maxpool2x2_rows(const float* in, float* out, int w, int i0, int i1) {
#ifdef VGG_FAST_KERNELS
  using namespace avx512;
  const int ow = w / 2;
  for (int i = i0; i < i1; ++i) {
    const float* r0 = in + long(2 * i) * w;
    const float* r1 = r0 + w;
    float* o = out + long(i) * ow;
    for (int j = 0; j < ow; j += 16) {
      const int count = std::min(16, ow - j);
      const __mmask16 lo = first_lanes(2 * count), hi = first_lanes(2 * count - 16);
      const __m512 t0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * j), t1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * j + 16);
      const __m512 u0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * j), u1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * j + 16);
      if (__builtin_expect(nan_windows(t0, u0, t1, u1) != 0, 0)) {  // a NaN: PyTorch's max, window by window
        maxpool2x2_windows_plain(r0, r1, o, j, j + count);
        continue;
      }
      const __m512 v0 = _mm512_max_ps(t0, u0), v1 = _mm512_max_ps(t1, u1);
      _mm512_mask_storeu_ps(o + j, first_lanes(count), _mm512_max_ps(evens(v0, v1), odds(v0, v1)));
    }
  }
#else
  maxpool2x2_rows_plain(in, out, w, i0, i1);
#endif
}

/// y[p][i][j] = max of x[p][2i..2i+1][2j..2j+1] for `planes` planes of h x w.
/// requires: y holds planes x (h/2) x (w/2) floats.
inline void maxpool2x2_forward(const float* x, float* y, long planes, int h, int w, int threads) {
  const int oh = h / 2, ow = w / 2;
  detail::for_each_plane(planes, threads, [&](long p) { maxpool2x2_rows(x + p * h * w, y + p * oh * ow, w, 0, oh); });
}

/// maxpool2x2_backward_plane_plain, 16 windows per step where built.
inline float maxpool2x2_backward_plane(const float* x, const float* dy, float* dx, int h, int w, bool relu_mask) {
#ifdef VGG_FAST_KERNELS
  using namespace avx512;
  const int oh = h / 2, ow = w / 2;
  __m512 sum = _mm512_setzero_ps();
  for (int i = 0; i < oh; ++i) {
    const float* r0 = x + long(2 * i) * w;
    const float* r1 = r0 + w;
    float* d0 = dx + long(2 * i) * w;
    float* d1 = d0 + w;
    const float* g = dy + long(i) * ow;
    for (int j = 0; j < ow; j += 16) {
      const int count = std::min(16, ow - j);
      const __mmask16 lo = first_lanes(2 * count), hi = first_lanes(2 * count - 16);
      const __m512 t0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * j), t1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * j + 16);
      const __m512 u0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * j), u1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * j + 16);
      const __m512 a = evens(t0, t1), b = odds(t0, t1), c = evens(u0, u1), d = odds(u0, u1);
      const __m512 m = _mm512_max_ps(_mm512_max_ps(a, b), _mm512_max_ps(c, d));
      __mmask16 live = relu_mask ? _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ) : __mmask16(0xFFFF);
      // First maximum in the order a, b, c, d wins, as in PyTorch.
      __mmask16 ka = _mm512_cmp_ps_mask(a, m, _CMP_EQ_OQ);
      __mmask16 kb = __mmask16(_mm512_cmp_ps_mask(b, m, _CMP_EQ_OQ) & ~ka);
      __mmask16 kc = __mmask16(_mm512_cmp_ps_mask(c, m, _CMP_EQ_OQ) & ~ka & ~kb);
      __mmask16 kd = __mmask16(~(ka | kb | kc));
      const __mmask16 nan = nan_windows(a, b, c, d);
      if (__builtin_expect(nan != 0, 0)) route_to_last_nan(a, b, c, d, nan, live, ka, kb, kc, kd);
      const __m512 grad = _mm512_maskz_loadu_ps(__mmask16(first_lanes(count) & live), g + j);
      sum = _mm512_add_ps(sum, grad);
      scatter_to_winners(d0 + 2 * j, d1 + 2 * j, lo, hi, grad, ka, kb, kc, kd);
    }
    if (w % 2) d0[w - 1] = d1[w - 1] = 0.0f;  // the column the floor rule dropped
  }
  if (h % 2) std::fill(dx + long(h - 1) * w, dx + long(h) * w, 0.0f);  // the dropped row
  return _mm512_reduce_add_ps(sum);
#else
  return maxpool2x2_backward_plane_plain(x, dy, dx, h, w, relu_mask);
#endif
}

#ifdef VGG_FAST_KERNELS
/// pooled = maxpool2x2 of pooled rows [i0, i1) of a plane whose rows [r0, ...) are in `in` (row
/// stride w), and their winner masks (winners: the plane's winner_plane_words(h, w)). 16 windows per
/// step; the window maximum is formed in place (each lane pair holds it twice), so each row's
/// winner bits are two compares. Windows holding a NaN go as in PyTorch (relu_pool_windows_scalar).
/// requires: r0 even and rows 2 * i0 - r0 .. 2 * i1 - r0 - 1 of `in` readable.
inline void maxpool2x2_rows_winners(const float* in, int r0, float* pooled, std::uint32_t* winners, int w, int i0,
                                    int i1) {
  using namespace avx512;
  const int ow = w / 2, n = (ow + 15) / 16;
  const long row_words = winner_row_words(w);
  const __m512i pick = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int i = i0; i < i1; ++i) {
    const float* top = in + long(2 * i - r0) * w;
    const float* bottom = top + w;
    std::uint32_t* words = winners + i * row_words;
    for (int k = 0; k < n; ++k) {
      const int j = 16 * k, count = std::min(16, ow - j);
      const __mmask16 lo = first_lanes(2 * count), hi = first_lanes(2 * count - 16);
      const __m512 t0 = _mm512_maskz_loadu_ps(lo, top + 2 * j), t1 = _mm512_maskz_loadu_ps(hi, top + 2 * j + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(lo, bottom + 2 * j), b1 = _mm512_maskz_loadu_ps(hi, bottom + 2 * j + 16);
      auto* halves = reinterpret_cast<__mmask16*>(words);
      if (__builtin_expect(nan_windows(t0, b0, t1, b1) != 0, 0)) {  // a NaN: PyTorch's choice, window by window
        std::uint32_t top_bits = 0, bottom_bits = 0;
        relu_pool_windows_scalar(top + 2 * j, bottom + 2 * j, count, pooled + long(i) * ow + j, top_bits, bottom_bits);
        halves[2 * k] = __mmask16(top_bits);
        halves[2 * k + 1] = __mmask16(top_bits >> 16);
        halves[2 * (n + k)] = __mmask16(bottom_bits);
        halves[2 * (n + k) + 1] = __mmask16(bottom_bits >> 16);
        continue;
      }
      __m512 m0 = _mm512_max_ps(t0, b0), m1 = _mm512_max_ps(t1, b1);
      m0 = _mm512_max_ps(m0, _mm512_permute_ps(m0, 0xB1));  // lanes 2l, 2l + 1: window l's maximum
      m1 = _mm512_max_ps(m1, _mm512_permute_ps(m1, 0xB1));
      // The input is a ReLU output: a maximum of 0 passes no gradient, so it has no winner.
      const __mmask16 live0 = _mm512_mask_cmp_ps_mask(lo, m0, _mm512_setzero_ps(), _CMP_GT_OQ);
      const __mmask16 live1 = _mm512_mask_cmp_ps_mask(hi, m1, _mm512_setzero_ps(), _CMP_GT_OQ);
      // Each compare's mask is one half of a word, stored straight from its mask register.
      _store_mask16(halves + 2 * k, _mm512_mask_cmp_ps_mask(live0, t0, m0, _CMP_EQ_OQ));
      _store_mask16(halves + 2 * k + 1, _mm512_mask_cmp_ps_mask(live1, t1, m1, _CMP_EQ_OQ));
      _store_mask16(halves + 2 * (n + k), _mm512_mask_cmp_ps_mask(live0, b0, m0, _CMP_EQ_OQ));
      _store_mask16(halves + 2 * (n + k) + 1, _mm512_mask_cmp_ps_mask(live1, b1, m1, _CMP_EQ_OQ));
      _mm512_mask_storeu_ps(pooled + long(i) * ow + j, first_lanes(count), _mm512_permutex2var_ps(m0, pick, m1));
    }
  }
}

/// Gradient of relu(conv) behind a fused 2x2 pool, from winner masks: dz at the winner of window
/// (i, j) is dy_pooled[i][j], 0 elsewhere (and in the row/column the floor rule dropped). Returns
/// the sum of dz (the bias gradient). One h x w plane, 16 windows per step.
inline float unpool_from_winners_plane(const std::uint32_t* winners, const float* dy_pooled, float* dz, int h, int w) {
  using namespace avx512;
  const int oh = h / 2, ow = w / 2, n = (ow + 15) / 16;
  const long row_words = winner_row_words(w);
  __m512 sum = _mm512_setzero_ps();
  for (int i = 0; i < oh; ++i) {
    const std::uint32_t* words = winners + i * row_words;
    float* d0 = dz + long(2 * i) * w;
    float* d1 = d0 + w;
    for (int k = 0; k < n; ++k) {
      const int j = 16 * k, count = std::min(16, ow - j);
      const __mmask16 lo = first_lanes(2 * count), hi = first_lanes(2 * count - 16);
      const std::uint32_t tl = even_bits(words[k]), tr = even_bits(words[k] >> 1) & ~tl, above = tl | tr;
      const std::uint32_t bl = even_bits(words[n + k]) & ~above;
      const std::uint32_t br = even_bits(words[n + k] >> 1) & ~(above | bl);
      const __m512 g = _mm512_maskz_loadu_ps(first_lanes(count), dy_pooled + long(i) * ow + j);
      sum = _mm512_mask_add_ps(sum, __mmask16(above | bl | br), sum, g);
      scatter_to_winners(d0 + 2 * j, d1 + 2 * j, lo, hi, g, __mmask16(tl), __mmask16(tr), __mmask16(bl), __mmask16(br));
    }
    if (w % 2) d0[w - 1] = d1[w - 1] = 0.0f;  // the column the floor rule dropped
  }
  if (h % 2) std::fill(dz + long(h - 1) * w, dz + long(h) * w, 0.0f);  // the dropped row
  return _mm512_reduce_add_ps(sum);
}
#endif

/// Backward of the 2x2 max-pool, same contract as maxpool2x2_backward_plain.
inline void maxpool2x2_backward(const float* x, const float* dy, float* dx, long planes, int h, int w, int threads,
                                bool relu_mask = false) {
  const long in = long(h) * w, out = long(h / 2) * (w / 2);
  detail::for_each_plane(planes, threads, [&](long p) {
    maxpool2x2_backward_plane(x + p * in, dy + p * out, dx + p * in, h, w, relu_mask);
  });
}

}  // namespace vgg::cpu
VGG_INTRINSICS_END
