#pragma once
// CPU kernel: Adam's update (torch.optim.Adam, amsgrad off) over a range of parameters, 16 lanes at
// a time on the AVX-512 path. elementwise::adam is the same update per element, but GCC keeps a
// loop over it scalar: std::sqrt may set errno, so each element takes a compare and a branch. Scalar,
// the update of the width/8 net's 2 M parameters was a tenth of its training step (perf, Xeon family
// 6 model 207). The arithmetic is elementwise::adam's, operation by operation, without contraction.

#include <cstddef>

#include "vgg/backend.hpp"
#include "vgg/cpu/kernel_path.hpp"
#include "vgg/elementwise.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

#ifdef VGG_FAST_KERNELS
/// p, m, v updated in place from g for elements [begin, end), the tail masked (no scalar remainder).
inline void adam_avx512(float* p, const float* g, float* m, float* v, long begin, long end, const AdamStep& s) {
  const __m512 wd = _mm512_set1_ps(s.weight_decay), b1 = _mm512_set1_ps(s.beta1), b2 = _mm512_set1_ps(s.beta2),
               one_b1 = _mm512_set1_ps(1.0f - s.beta1), one_b2 = _mm512_set1_ps(1.0f - s.beta2),
               bias2 = _mm512_set1_ps(s.bias2_sqrt), eps = _mm512_set1_ps(s.eps), step = _mm512_set1_ps(s.step_size);
  for (long i = begin; i < end; i += 16) {
    const long left = end - i;
    const __mmask16 lanes = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    const __m512 pi = _mm512_maskz_loadu_ps(lanes, p + i), gi = _mm512_maskz_loadu_ps(lanes, g + i);
    const __m512 grad = _mm512_add_ps(gi, _mm512_mul_ps(wd, pi));
    const __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_maskz_loadu_ps(lanes, m + i)), _mm512_mul_ps(one_b1, grad));
    const __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_maskz_loadu_ps(lanes, v + i)),
                                    _mm512_mul_ps(_mm512_mul_ps(one_b2, grad), grad));
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bias2), eps);
    _mm512_mask_storeu_ps(m + i, lanes, mi);
    _mm512_mask_storeu_ps(v + i, lanes, vi);
    _mm512_mask_storeu_ps(p + i, lanes, _mm512_sub_ps(pi, _mm512_div_ps(_mm512_mul_ps(step, mi), denom)));
  }
}
#endif

}  // namespace vgg::cpu
VGG_INTRINSICS_END
