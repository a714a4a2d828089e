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
  // Backward: dW = dz^T x (out x in, depth batch) and dx = dz W (batch x in, depth out).
  std::vector<GemmPlan> weight_plans, input_plans;
  void reserve_backward(int batch, int in, int out, int threads) {
    reserve(batch, in, out, threads);
    if (int(weight_plans.size()) < threads) {
      weight_plans.resize(std::size_t(threads));
      input_plans.resize(std::size_t(threads));
    }
    for (auto& p : weight_plans) p.reserve(out, in, batch);
    for (auto& p : input_plans) p.reserve(batch, in, out);
  }
  /// bf16 operands for this layer's products on the AVX-512 path (gemm.hpp).
  /// requires: !on || bf16::bf16_gemm_available().
  void set_bf16(bool on) {
    for (auto* list : {&plans, &weight_plans, &input_plans})
      for (GemmPlan& plan : *list) plan.set_bf16(on);
  }
};

/// requires: ws.reserve(b, in, out, t) with b >= n and t >= threads.
template <KernelPath Path = fastest_path>
inline void linear_forward(const float* x, const float* weight, const float* bias, float* y, int n, int in, int out,
                           bool relu, LinearWorkspace& ws, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    const Range mine = split(out, tid, omp_get_num_threads());
    const long cols = mine.end - mine.begin;
    if (cols > 0) {
      for (int i = 0; i < n; ++i) std::copy(bias + mine.begin, bias + mine.end, y + long(i) * out + mine.begin);
      gemm<false, true, Path>(n, cols, in, x, in, weight + mine.begin * in, in, y + mine.begin, out,
                        ws.plans[std::size_t(tid)]);
      if (relu)
        for (int i = 0; i < n; ++i) {
          float* row = y + long(i) * out + mine.begin;
          for (long j = 0; j < cols; ++j) row[j] = std::max(row[j], 0.0f);
        }
    }
  }
}

/// Backward of y = relu?(x W^T + b): overwrites dy with dz (ReLU mask applied when relu), writes
/// the weight and bias gradients, and dx when not null. Threads split the output features for
/// dW and db, then the input features for dx.
/// requires: ws.reserve_backward(b, in, out, t) with b >= n and t >= threads.
template <KernelPath Path = fastest_path>
inline void linear_backward(const float* x, const float* weight, const float* y, float* dy, float* dx,
                            float* weight_grad, float* bias_grad, int n, int in, int out, bool relu,
                            LinearWorkspace& ws, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const Range rows = split(out, tid, nth);
    if (relu)
      for (int i = 0; i < n; ++i)
        for (long j = rows.begin; j < rows.end; ++j)
          dy[long(i) * out + j] = y[long(i) * out + j] <= 0.0f ? 0.0f : dy[long(i) * out + j];  // NaN passes
    for (long j = rows.begin; j < rows.end; ++j) {
      float s = 0.0f;
      for (int i = 0; i < n; ++i) s += dy[long(i) * out + j];
      bias_grad[j] = s;
    }
    if (rows.end > rows.begin) {
      float* dw = weight_grad + rows.begin * in;
      std::fill(dw, dw + (rows.end - rows.begin) * in, 0.0f);
      gemm<true, false, Path>(rows.end - rows.begin, in, n, dy + rows.begin, out, x, in, dw, in,
                        ws.weight_plans[std::size_t(tid)]);
    }
    if (dx) {
#pragma omp barrier
      const Range cols = split(in, tid, nth);
      if (cols.end > cols.begin) {
        for (int i = 0; i < n; ++i) std::fill(dx + long(i) * in + cols.begin, dx + long(i) * in + cols.end, 0.0f);
        gemm<false, false, Path>(n, cols.end - cols.begin, out, dy, out, weight + cols.begin, in, dx + cols.begin, in,
                           ws.input_plans[std::size_t(tid)]);
      }
    }
  }
}

}  // namespace vgg::cpu
