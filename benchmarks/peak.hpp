#pragma once
// Probe of the machine's FMA peak: independent fused multiply-adds on full-width vector registers
// on every OpenMP thread, so every other figure can be shown as a fraction of it.

#include <immintrin.h>
#include <omp.h>

#include <chrono>

namespace bench {

/// GFLOP/s of back-to-back FMAs (2 FLOP per lane) on `threads` threads, best of a few trials.
inline double fma_peak_gflops(int threads) {
  constexpr long kIterations = 20'000'000;
#if defined(__AVX512F__)
  using Vec = __m512;
  constexpr int kLanes = 16;
  auto fma = [](Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); };
  auto set1 = [](float v) { return _mm512_set1_ps(v); };
  auto sum = [](Vec v) { return _mm512_reduce_add_ps(v); };
#else
  using Vec = __m256;
  constexpr int kLanes = 8;
  auto fma = [](Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); };
  auto set1 = [](float v) { return _mm256_set1_ps(v); };
  auto sum = [](Vec v) {
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  };
#endif
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    float total = 0;
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      // 12 independent chains hide the FMA latency (4 cycles x 2 ports + margin).
      Vec acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = set1(float(i) * 1e-3f);
      const Vec a = set1(0.999999f), b = set1(1e-7f);
      for (long it = 0; it < kIterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = fma(acc[i], a, b);
      float s = 0;
      for (int i = 0; i < 12; ++i) s += sum(acc[i]);
#pragma omp atomic
      total += s;
    }
    volatile float sink = total;  // keeps the loop alive
    (void)sink;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flops = 2.0 * kLanes * 12 * double(kIterations) * threads;
    if (flops / seconds * 1e-9 > best) best = flops / seconds * 1e-9;
  }
  return best;
}

}  // namespace bench
