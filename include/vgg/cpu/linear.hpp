#pragma once
// CPU kernel: fully connected layer y = x W^T + b (optionally ReLU), W stored out x in as in
// PyTorch. Threads split the output features; each runs its own single-threaded GEMM, or, for a
// few rows of x on the AVX-512 path, reads its rows of W once as they are (linear_few_rows.hpp).

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vgg/buffer.hpp"
#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/linear_few_rows.hpp"
#include "vgg/cpu/parallel.hpp"

namespace vgg::cpu {

struct LinearWorkspace {
  std::vector<GemmPlan> plans;
  void reserve(int batch, int in, int out, int threads) {
    if (int(plans.size()) < threads) plans.resize(std::size_t(threads));
    for (auto& p : plans) p.reserve(batch, out, in);
#ifdef VGG_BF16_KERNELS
    // bf16 mode's few-row forward rounds x once per call: room for it wherever bf16 can run.
    if (bf16::bf16_gemm_available()) {
      const std::size_t words = std::size_t(std::min(batch, few_rows::kMaxRows)) * std::size_t(few_rows::pairs(in));
      if (words > x_pairs.capacity()) {
        x_pairs.reserve(words);
        std::memset(x_pairs.data(), 0, words * sizeof(std::uint32_t));  // no first touch in a step
      }
    }
#endif
  }
  /// Rows of x up to which the AVX-512 path's forward reads W row by row instead of the GEMM
  /// (0: always the GEMM; for benchmarks and tests that compare the two).
  int few_rows_max = few_rows::kMaxRows;
  Buffer<std::uint32_t> x_pairs;  // x as bf16 pairs, for bf16 mode's few-row forward
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
#ifdef VGG_FAST_KERNELS
  if constexpr (Path == KernelPath::avx512) {
    if (n >= 1 && n <= std::min(ws.few_rows_max, few_rows::kMaxRows)) {
      const std::uint32_t* x_pairs = nullptr;
#ifdef VGG_BF16_KERNELS
      if (ws.plans.front().bf16()) {  // bf16 mode: x rounded once, here, for every thread
        few_rows::pack_rows_bf16(x, in, n, in, ws.x_pairs.data());
        x_pairs = ws.x_pairs.data();
      }
#endif
#pragma omp parallel num_threads(threads)
      {
        const Range mine = split(out, omp_get_thread_num(), omp_get_num_threads());
        few_rows::linear(x, in, n, weight, in, bias, y, out, mine.begin, mine.end, x_pairs, relu);
      }
      return;
    }
  }
#endif
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
