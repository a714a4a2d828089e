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
inline void maxpool2x2_backward(const float* x, const float* dy, float* dx, long planes, int h, int w, int threads) {
  const int oh = h / 2, ow = w / 2;
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(planes, omp_get_thread_num(), omp_get_num_threads());
    for (long p = mine.begin; p < mine.end; ++p) {
      const float* in = x + p * h * w;
      const float* g = dy + p * oh * ow;
      float* out = dx + p * h * w;
      std::fill(out, out + long(h) * w, 0.0f);
      for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j) {
          long best = long(2 * i) * w + 2 * j;
          const long candidates[3] = {best + 1, best + w, best + w + 1};
          for (long c : candidates)
            if (in[c] > in[best]) best = c;
          out[best] = g[i * ow + j];
        }
    }
  }
}

}  // namespace vgg::cpu
