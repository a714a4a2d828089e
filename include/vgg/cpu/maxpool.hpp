#pragma once
// CPU kernel: 2x2 max-pool, stride 2, PyTorch's floor rule (a trailing odd row/column is dropped).

#include <omp.h>

#include <algorithm>

#include "vgg/cpu/parallel.hpp"

namespace vgg::cpu {

/// y[p][i][j] = max of x[p][2i..2i+1][2j..2j+1] for `planes` planes of h x w.
/// requires: y holds planes x (h/2) x (w/2) floats.
inline void maxpool2x2_forward(const float* x, float* y, long planes, int h, int w, int threads) {
  const int oh = h / 2, ow = w / 2;
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(planes, omp_get_thread_num(), omp_get_num_threads());
    for (long p = mine.begin; p < mine.end; ++p) {
      const float* in = x + p * h * w;
      float* out = y + p * oh * ow;
      for (int i = 0; i < oh; ++i) {
        const float* r0 = in + long(2 * i) * w;
        const float* r1 = r0 + w;
        for (int j = 0; j < ow; ++j)
          out[i * ow + j] = std::max(std::max(r0[2 * j], r0[2 * j + 1]), std::max(r1[2 * j], r1[2 * j + 1]));
      }
    }
  }
}

/// Backward of the 2x2 max-pool: each output gradient goes to the arg-max of its window; ties go
/// to the first maximum in row-major order, as in PyTorch. Rows/columns dropped by the floor rule
/// get zero gradient. requires: dx holds planes x h x w floats.
/// Branch-free: which of the four wins is random, so a branch per comparison would mispredict
/// about half the time (it made this the costliest loop of a training step).
inline void maxpool2x2_backward(const float* x, const float* dy, float* dx, long planes, int h, int w, int threads) {
  const int oh = h / 2, ow = w / 2;
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(planes, omp_get_thread_num(), omp_get_num_threads());
    for (long p = mine.begin; p < mine.end; ++p) {
      const float* in = x + p * h * w;
      const float* g = dy + p * oh * ow;
      float* out = dx + p * h * w;
      for (int i = 0; i < oh; ++i) {
        const float* r0 = in + long(2 * i) * w;
        const float* r1 = r0 + w;
        float* d0 = out + long(2 * i) * w;
        float* d1 = d0 + w;
        const float* gi = g + long(i) * ow;
#pragma omp simd
        for (int j = 0; j < ow; ++j) {
          const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1], grad = gi[j];
          // First maximum in the order a, b, c, d wins
          // (bitwise & and float products: no short-circuit, so no branches).
          const float m = std::max(std::max(a, b), std::max(c, d));
          const float a_wins = float(a == m);
          const float b_wins = float(b == m) * (1.0f - a_wins);
          const float c_wins = float(c == m) * (1.0f - a_wins) * (1.0f - b_wins);
          const float d_wins = 1.0f - a_wins - b_wins - c_wins;
          d0[2 * j] = a_wins * grad;
          d0[2 * j + 1] = b_wins * grad;
          d1[2 * j] = c_wins * grad;
          d1[2 * j + 1] = d_wins * grad;
        }
        if (w % 2) d0[w - 1] = d1[w - 1] = 0.0f;  // the column the floor rule dropped
      }
      if (h % 2) std::fill(out + long(h - 1) * w, out + long(h) * w, 0.0f);  // the dropped row
    }
  }
}

}  // namespace vgg::cpu
