#pragma once
// AVX-512 kernel: a 3x3 convolution (stride 1, padding 1) + bias (+ ReLU) over a band of output rows,
// computed directly from the input rows, for layers with few input channels (the width/8 net's
// block 2, 8 -> 16 channels at 112 x 112).
//
// There im2col + GEMM spent almost half its time writing and re-reading the column matrix (72 rows,
// 9x the input) for a GEMM of depth 72. This kernel takes the GEMM's 8 x 32 register tile (8 output
// channels x 32 pixels of one row) and loads each tap's B vectors straight from the input row,
// shifted by kx - 1 and masked at the image's edges: nothing is copied. Where the input has many
// channels the GEMM's blocking pays and Winograd takes over, so the rule (conv3x3.hpp) picks this
// kernel for shallow layers only.

#include <algorithm>

#include "vgg/cpu/gemm_avx512.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

#ifdef VGG_FAST_KERNELS
namespace avx512 {

/// dst[co * ldd + (r - r0) * w + x] = bias[co] + sum over ci, ky, kx of W[co][ci][ky][kx] *
/// in[ci][r + ky - 1][x + kx - 1] (0 outside the image), then max(., 0) where relu, for rows
/// [r0, r1) of one image and every output channel. `packed` holds W as pack_a_whole<false> lays out a
/// single depth pass (8-channel tiles, each tap's 8 weights adjacent; channels past cout zero).
/// requires: cin * 9 <= kKc; in is one cin x h x w image.
inline void conv3x3_direct_rows(const float* in, const float* packed, const float* bias, bool relu, float* dst,
                                long ldd, int cin, int cout, int h, int w, int r0, int r1) {
  const long plane = long(h) * w, depth = long(cin) * 9;
  const __m512 zero = _mm512_setzero_ps();
  for (int r = r0; r < r1; ++r) {
    const int ky0 = r == 0 ? 1 : 0, ky1 = r == h - 1 ? 2 : 3;  // the taps' rows inside the image
    for (int x0 = 0; x0 < w; x0 += kNr) {
      // Lanes of the two B vectors whose input column x0 + lane + kx - 1 lies inside the row.
      __mmask16 lo[3], hi[3];
      for (int kx = 0; kx < 3; ++kx) {
        const int first = x0 + kx - 1;
        lo[kx] = first_lanes(w - first) & ~first_lanes(-first);  // (first_lanes clamps to 0 .. 16)
        hi[kx] = first_lanes(w - first - 16) & ~first_lanes(-first - 16);
      }
      const int count = std::min(kNr, w - x0);
      const __mmask16 store_lo = first_lanes(count), store_hi = first_lanes(count - 16);
      for (int q = 0; q < cout; q += kMr) {
        const float* a = packed + long(q) * depth;
        __m512 c[kMr][2];
#pragma GCC unroll 8
        for (int j = 0; j < kMr; ++j) c[j][0] = c[j][1] = _mm512_set1_ps(q + j < cout ? bias[q + j] : 0.0f);
        for (int ci = 0; ci < cin; ++ci) {
          for (int ky = ky0; ky < ky1; ++ky) {
            const float* row = in + ci * plane + long(r + ky - 1) * w + x0 - 1;
            const float* ak = a + (long(ci) * 9 + ky * 3) * kMr;
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; ++kx) {
              const __m512 b0 = _mm512_maskz_loadu_ps(lo[kx], row + kx);
              const __m512 b1 = _mm512_maskz_loadu_ps(hi[kx], row + kx + 16);
#pragma GCC unroll 8
              for (int j = 0; j < kMr; ++j) {
                const __m512 aj = _mm512_set1_ps(ak[kx * kMr + j]);
                c[j][0] = _mm512_fmadd_ps(aj, b0, c[j][0]);
                c[j][1] = _mm512_fmadd_ps(aj, b1, c[j][1]);
              }
            }
          }
        }
        float* out = dst + long(r - r0) * w + x0;
#pragma GCC unroll 8
        for (int j = 0; j < kMr; ++j) {
          if (q + j >= cout) break;
          _mm512_mask_storeu_ps(out + (q + j) * ldd, store_lo, relu ? _mm512_max_ps(zero, c[j][0]) : c[j][0]);
          _mm512_mask_storeu_ps(out + (q + j) * ldd + 16, store_hi, relu ? _mm512_max_ps(zero, c[j][1]) : c[j][1]);
        }
      }
    }
  }
}

}  // namespace avx512
#endif

}  // namespace vgg::cpu
VGG_INTRINSICS_END
