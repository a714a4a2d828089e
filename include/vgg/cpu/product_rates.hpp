#pragma once
// How fast this core multiplies with the bf16 kernel (vdpbf16ps) against the fp32 FMA kernel,
// measured in a few milliseconds, for a log line: bf16 mode is chosen for speed, and on some CPUs
// the vdpbf16ps kernel is the slower one. On the Xeon family 6 model 207 with AMX hidden
// (VGG_AMX=0), the fp32 8 x 32 kernel ran at 235 GFLOP/s per core and the vdpbf16ps one at 121, and
// bf16 training at 0.72x fp32; on the EPYC kinds bf16 training ran 1.31-1.42x fp32
// (docs/PERFORMANCE.md). The library does not switch precision by itself: the caller asked for
// bf16's arithmetic; the tools say what it costs.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "vgg/buffer.hpp"
#include "vgg/cpu/gemm_bf16.hpp"

namespace vgg::cpu {

/// GFLOP/s of one core (2 per multiply-add), 0 where not measured.
struct ProductRates {
  double fp32_gflops = 0;
  double bf16_gflops = 0;
};

/// A sentence for a log where bf16 products run slower than fp32 ones on this core by the rates
/// given; "" where they do not, or a rate is unknown (0, negative, not finite).
inline std::string bf16_slower_note(const ProductRates& r) {
  const auto known = [](double x) { return std::isfinite(x) && x > 0; };
  if (!known(r.fp32_gflops) || !known(r.bf16_gflops) || r.bf16_gflops >= r.fp32_gflops) return "";
  char text[320];
  std::snprintf(text, sizeof text,
                "on this CPU the bf16 kernel (vdpbf16ps) multiplies at %.0f GFLOP/s per core against %.0f for "
                "fp32 FMAs (measured at start-up): bf16 mode will likely train slower than fp32 here",
                r.bf16_gflops, r.fp32_gflops);
  return text;
}

#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
/// Both 8 x 32 kernels on packed operands that stay in L1 (16 rows, 32 columns, depth 128), best of
/// 5 alternating runs of about 0.3 ms each: what the multiplications alone allow, not a layer's
/// rate. requires: bf16::bf16_gemm_available().
inline ProductRates measure_product_rates() {
  constexpr Index m = 16, n = 32, k = 128, pairs = k / 2, calls = 1000;
  Buffer<float> a(std::size_t(m * k)), b(std::size_t(k * n)), c(std::size_t(m * n));
  Buffer<std::uint32_t> a16(std::size_t(m * pairs)), b16(std::size_t(pairs * n));
  for (Index i = 0; i < m * k; ++i) a.data()[i] = 0.5f;
  for (Index i = 0; i < k * n; ++i) b.data()[i] = 0.25f;
  for (Index i = 0; i < m * pairs; ++i) a16.data()[i] = bf16::pair(0.5f, -0.25f);
  for (Index i = 0; i < pairs * n; ++i) b16.data()[i] = bf16::pair(0.125f, 1.0f);
  const avx512::Epilogue e{};
  const auto seconds = [](auto&& body) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double fp32 = 1e30, bf16 = 1e30;
  for (int round = 0; round < 5; ++round) {
    fp32 = std::min(fp32, seconds([&] {
                      for (Index r = 0; r < calls; ++r)
                        for (Index i0 = 0; i0 < m; i0 += avx512::kMr)
                          avx512::kernel_8x32<avx512::ALayout::interleaved>(k, a.data() + i0 * k, avx512::kMr, b.data(),
                                                                            avx512::kNr, c.data() + i0 * n, n,
                                                                            avx512::kMr, avx512::kNr, e);
                    }));
    bf16 = std::min(bf16, seconds([&] {
                      for (Index r = 0; r < calls; ++r)
                        for (Index i0 = 0; i0 < m; i0 += bf16::kMr)
                          bf16::kernel_8x32(pairs, a16.data() + i0 * pairs, b16.data(), c.data() + i0 * n, n, bf16::kMr,
                                            bf16::kNr, e);
                    }));
  }
  const double flops = 2.0 * double(m) * double(n) * double(k) * double(calls);
  return {flops / fp32 * 1e-9, flops / bf16 * 1e-9};
}
#endif

}  // namespace vgg::cpu
