#pragma once
// The 16 x 16 in-register transpose of 32-bit elements that both packings use: the fp32 GEMM's
// (gemm_avx512.hpp, B^T panels) and bf16's (gemm_bf16.hpp, which moves bf16 pairs through it as
// they are). It carries its own target attribute, like the bf16 kernels, so that it exists in every
// x86-64 build: the bf16 code is compiled whatever -march says and runs where cpuid allows.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include "vgg/cpu/kernel_path.hpp"

#define VGG_TARGET_AVX512F __attribute__((target("avx512f")))

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

/// In-register transpose of 16 vectors (rows) into 16 vectors (columns).
VGG_TARGET_AVX512F inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4q + s] now holds, in each 128-bit lane L, column 4L + s of rows 4q .. 4q + 3 (q = row quad).
  for (int s = 0; s < 4; ++s) {
    const __m512 a = _mm512_shuffle_f32x4(r[s], r[4 + s], 0x88), b = _mm512_shuffle_f32x4(r[s], r[4 + s], 0xDD);
    const __m512 c = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0x88), d = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0xDD);
    t[s] = _mm512_shuffle_f32x4(a, c, 0x88);       // column s
    t[8 + s] = _mm512_shuffle_f32x4(a, c, 0xDD);   // column 8 + s
    t[4 + s] = _mm512_shuffle_f32x4(b, d, 0x88);   // column 4 + s
    t[12 + s] = _mm512_shuffle_f32x4(b, d, 0xDD);  // column 12 + s
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

}  // namespace vgg::cpu
VGG_INTRINSICS_END
#endif
