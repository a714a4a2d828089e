#pragma once
// Static work splitting for the layers' own OpenMP regions. Layers never open a parallel region
// around code that is itself threaded: each thread runs single-threaded kernels on its share.

#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace vgg::cpu {

/// Half-open range [begin, end) of `total` items that thread `tid` of `threads` owns.
struct Range {
  std::ptrdiff_t begin, end;
};
inline Range split(std::ptrdiff_t total, int tid, int threads) {
  const std::ptrdiff_t base = total / threads, extra = total % threads;
  const std::ptrdiff_t begin = tid * base + std::min<std::ptrdiff_t>(tid, extra);
  return {begin, begin + base + (tid < extra ? 1 : 0)};
}

/// The thread count the library uses when none is given: OpenMP's current maximum.
inline int default_threads() { return std::max(1, omp_get_max_threads()); }

}  // namespace vgg::cpu
