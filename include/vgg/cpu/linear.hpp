#pragma once
// CPU kernel: fully connected layer y = x W^T + b (optionally ReLU), W stored out x in as in
// PyTorch. Threads split the output features; each runs its own single-threaded GEMM.

#include <omp.h>

#include <algorithm>
#include <vector>

#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/parallel.hpp"

namespace vgg::cpu {

struct LinearWorkspace {
  std::vector<GemmPlan> plans;
  void reserve(int batch, int in, int out, int threads) {
    if (int(plans.size()) < threads) plans.resize(std::size_t(threads));
    for (auto& p : plans) p.reserve(batch, out, in);
  }
};

/// requires: ws.reserve(b, in, out, t) with b >= n and t >= threads.
inline void linear_forward(const float* x, const float* weight, const float* bias, float* y, int n, int in, int out,
                           bool relu, LinearWorkspace& ws, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    const Range mine = split(out, tid, omp_get_num_threads());
    const long cols = mine.end - mine.begin;
    if (cols > 0) {
      for (int i = 0; i < n; ++i) std::copy(bias + mine.begin, bias + mine.end, y + long(i) * out + mine.begin);
      gemm<false, true>(n, cols, in, x, in, weight + mine.begin * in, in, y + mine.begin, out,
                        ws.plans[std::size_t(tid)]);
      if (relu)
        for (int i = 0; i < n; ++i) {
          float* row = y + long(i) * out + mine.begin;
          for (long j = 0; j < cols; ++j) row[j] = std::max(row[j], 0.0f);
        }
    }
  }
}

}  // namespace vgg::cpu
