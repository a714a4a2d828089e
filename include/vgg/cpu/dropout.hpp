#pragma once
// CPU kernel: inverted dropout. The mask is a counter-based hash of (seed, stream, index), so it
// does not depend on the thread count and the backward pass can recompute it instead of storing it.

#include <omp.h>

#include <cstdint>

#include "vgg/cpu/parallel.hpp"
#include "vgg/elementwise.hpp"

namespace vgg::cpu {

inline bool dropout_keeps(std::uint64_t seed, std::uint64_t stream, long i, float p) {
  return elementwise::dropout_keeps(seed, stream, std::uint64_t(i), p);
}

/// y[i] = x[i] / (1 - p) where kept, 0 where dropped; each element is dropped with probability p.
inline void dropout_forward(const float* x, float* y, long count, float p, std::uint64_t seed, std::uint64_t stream,
                            int threads) {
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(count, omp_get_thread_num(), omp_get_num_threads());
    for (long i = mine.begin; i < mine.end; ++i)
      y[i] = elementwise::dropout(x[i], seed, stream, std::uint64_t(i), p, scale);
  }
}

/// Backward of inverted dropout: the same mask (recomputed from the same seed and stream) and scale.
inline void dropout_backward(const float* dy, float* dx, long count, float p, std::uint64_t seed,
                             std::uint64_t stream, int threads) {
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel num_threads(threads)
  {
    const Range mine = split(count, omp_get_thread_num(), omp_get_num_threads());
    for (long i = mine.begin; i < mine.end; ++i)
      dx[i] = elementwise::dropout(dy[i], seed, stream, std::uint64_t(i), p, scale);
  }
}

}  // namespace vgg::cpu
