#pragma once
// AVX-512 forward kernel for a 3x3 convolution (stride 1, padding 1) + bias + ReLU with ONE input
// channel, the first layer of every VGG here, with the following 2x2 max-pool taken from registers.
// With one input channel, im2col + GEMM is a 9-deep product whose time goes to copying and storing;
// this kernel keeps each 16-pixel segment's nine shifted inputs in registers while it forms every
// output channel (9 FMAs and one store each), and streams the output past the caches (the output is
// 8-64x the input). Measured: width-1 conv1 forward 4.6 -> 2.3 ms for 8 images (bench_blocks).

#include <algorithm>
#include <cstdint>

#include "vgg/cpu/gemm_avx512.hpp"

namespace vgg::cpu {

#ifdef VGG_FAST_KERNELS
namespace avx512 {
/// The nine shifted 16-pixel input vectors that output row r, pixels [x0, x0 + count), reads.
inline void one_channel_taps(const float* x, int h, int w, int r, int x0, int count, __m512 v[9]) {
  for (int ky = 0; ky < 3; ++ky) {
    const int sy = r + ky - 1;
    for (int kx = 0; kx < 3; ++kx) {
      // Lane l reads x0 + l + kx - 1, which must lie in [0, w) (and l < count).
      const int first = x0 + kx - 1, lo = std::max(0, -first), hi = std::min(count, w - first);
      const __mmask16 m = sy >= 0 && sy < h && hi > lo ? __mmask16(first_lanes(hi) & ~first_lanes(lo)) : 0;
      v[ky * 3 + kx] = _mm512_maskz_loadu_ps(m, m ? x + long(sy) * w + first : x);  // no address outside x
    }
  }
}

/// relu(bias + sum of the nine taps weighted by w[0..8]).
inline __m512 one_channel_output(const __m512 v[9], const float* w, float bias) {
  __m512 a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[0]), v[0], _mm512_set1_ps(bias));
  __m512 a1 = _mm512_mul_ps(_mm512_set1_ps(w[1]), v[1]);
  __m512 a2 = _mm512_mul_ps(_mm512_set1_ps(w[2]), v[2]);
  a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[3]), v[3], a0);
  a1 = _mm512_fmadd_ps(_mm512_set1_ps(w[4]), v[4], a1);
  a2 = _mm512_fmadd_ps(_mm512_set1_ps(w[5]), v[5], a2);
  a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[6]), v[6], a0);
  a1 = _mm512_fmadd_ps(_mm512_set1_ps(w[7]), v[7], a1);
  a2 = _mm512_fmadd_ps(_mm512_set1_ps(w[8]), v[8], a2);
  return _mm512_max_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), a2), _mm512_setzero_ps());
}

/// Stores 16 outputs (or the first `count`): streamed past the caches when a whole aligned line,
/// since a one-channel conv writes 8-64x more than it reads and nothing re-reads it soon.
inline void store_output(float* o, __m512 value, int count) {
  if (count == 16 && (reinterpret_cast<std::uintptr_t>(o) & 63) == 0)
    _mm512_stream_ps(o, value);
  else
    _mm512_mask_storeu_ps(o, first_lanes(count), value);
}

/// Rows [r0, r1) of y = relu(conv3x3(x) + bias) for a one-channel image x (h x w) and cout output
/// planes, and, when pooled is not null, their 2x2 max-pool (r0 even; pooled is the image's
/// cout x h/2 x w/2 output). A 9-deep GEMM spends its time packing and storing, not multiplying;
/// here each 16-pixel segment's nine shifted inputs stay in registers while every output channel is
/// formed from them (9 FMAs and a streamed store), two rows at a time so that the pool is taken
/// from registers too.
inline void conv3x3_relu_one_channel(const float* x, const float* weight, const float* bias, float* y,
                                     float* pooled, int cout, int h, int w, int r0, int r1) {
  const long plane = long(h) * w;
  const int ow = w / 2;
  const long pooled_plane = long(h / 2) * ow;
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int r = r0; r < r1; r += 2) {
    const bool pair = r + 1 < r1;
    for (int x0 = 0; x0 < w; x0 += 16) {
      const int count = std::min(16, w - x0);
      __m512 top[9], bottom[9];
      one_channel_taps(x, h, w, r, x0, count, top);
      if (pair) one_channel_taps(x, h, w, r + 1, x0, count, bottom);
      const int pooled_count = std::min(8, ow - x0 / 2);
      for (int co = 0; co < cout; ++co) {
        const float* wc = weight + co * 9;
        const __m512 a = one_channel_output(top, wc, bias[co]);
        store_output(y + co * plane + long(r) * w + x0, a, count);
        if (!pair) continue;
        const __m512 b = one_channel_output(bottom, wc, bias[co]);
        store_output(y + co * plane + long(r + 1) * w + x0, b, count);
        if (pooled && pooled_count > 0) {
          const __m512 m = _mm512_max_ps(a, b);
          const __m512 p = _mm512_max_ps(_mm512_permutexvar_ps(evens, m), _mm512_permutexvar_ps(odds, m));
          _mm512_mask_storeu_ps(pooled + co * pooled_plane + long(r / 2) * ow + x0 / 2, first_lanes(pooled_count), p);
        }
      }
    }
  }
  _mm_sfence();  // streamed stores are visible before the threads meet again
}

}  // namespace avx512
#endif

}  // namespace vgg::cpu
