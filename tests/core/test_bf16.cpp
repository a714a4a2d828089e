// The bf16 GEMM (AVX512-BF16) against two references: the exact sum of the bf16-rounded operands'
// products (what the kernel computes, up to fp32 summation), and the fp32 product of the original
// operands, within the error bf16's 8-bit significand allows. Skipped on CPUs without avx512_bf16.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "reference.hpp"
#include "vgg/buffer.hpp"
#include "vgg/cpu/gemm_bf16.hpp"

namespace {

namespace bf16 = vgg::cpu::bf16;

TEST_CASE("float to bf16 rounds to nearest, ties to even, as torch does") {
  CHECK(bf16::to_bf16(1.0f) == 0x3F80);
  CHECK(bf16::to_bf16(-2.0f) == 0xC000);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even significand, 1.
  CHECK(bf16::to_bf16(1.0f + 0x1p-8f) == 0x3F80);
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  CHECK(bf16::to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);
  CHECK(bf16::to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);  // above halfway: up
  CHECK(bf16::from_bf16(bf16::to_bf16(std::numeric_limits<float>::infinity())) ==
        std::numeric_limits<float>::infinity());
  CHECK(std::isnan(bf16::from_bf16(bf16::to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(bf16::round_to_bf16(std::numeric_limits<float>::max())));  // rounds past the largest bf16
  for (float x : {0.1f, -3.14159f, 1e-20f, 65504.0f}) {
    const float r = bf16::round_to_bf16(x);
    CHECK(std::fabs(r - x) <= std::fabs(x) * 0x1p-8f);  // half an ulp of an 8-bit significand
  }
}

template <bool TransA, bool TransB>
void check_gemm(int m, int n, int k, float alpha, bool accumulate, bool bias_relu, unsigned seed, bool prepacked = false) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(TransA);
  CAPTURE(TransB);
  CAPTURE(prepacked);
  const auto a = ref::random_vector(std::size_t(m) * k, seed, -1.0f, 1.0f);
  const auto b = ref::random_vector(std::size_t(k) * n, seed + 1, -1.0f, 1.0f);
  const auto bias = ref::random_vector(std::size_t(m), seed + 2, -0.5f, 0.5f);
  const auto c0 = ref::random_vector(std::size_t(m) * n, seed + 3, -1.0f, 1.0f);
  const int lda = TransA ? m : k, ldb = TransB ? k : n, ldc = n;
  const auto A = [&](int i, int p) { return TransA ? a[std::size_t(p) * lda + i] : a[std::size_t(i) * lda + p]; };
  const auto B = [&](int p, int j) { return TransB ? b[std::size_t(j) * ldb + p] : b[std::size_t(p) * ldb + j]; };

  vgg::Buffer<std::uint32_t> a_pack, b_pack, a_whole;
  a_pack.reserve(std::size_t((m + 7) / 8 * 8 * bf16::kKc / 2));
  b_pack.reserve(std::size_t(bf16::packed_b_size()));
  a_whole.reserve(std::size_t(bf16::packed_a_size(m, k)));
  if (prepacked) bf16::pack_a_whole<TransA>(a.data(), lda, m, k, a_whole.data());
  std::vector<float> c = c0;
  const vgg::cpu::avx512::Epilogue e{alpha, accumulate, bias_relu ? bias.data() : nullptr, bias_relu};
  bf16::gemm<TransA, TransB>(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, a_pack.data(), b_pack.data(), e,
                             prepacked ? a_whole.data() : nullptr);

  double worst_tight = 0, worst_loose = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double rounded = 0, exact = 0, magnitude = 0;
      for (int p = 0; p < k; ++p) {
        rounded += double(bf16::round_to_bf16(A(i, p))) * double(bf16::round_to_bf16(B(p, j)));
        exact += double(A(i, p)) * double(B(p, j));
        magnitude += std::fabs(double(A(i, p)) * double(B(p, j)));
      }
      const auto finish = [&](double dot) {
        double r = alpha * dot + (accumulate ? c0[std::size_t(i) * ldc + j] : 0.0) + (bias_relu ? bias[std::size_t(i)] : 0.0);
        return bias_relu ? std::max(r, 0.0) : r;
      };
      const double got = c[std::size_t(i) * ldc + j];
      const double scale = std::fabs(alpha) * magnitude + 1.0;
      // fp32 sums of exact bf16 products: k roundings of 2^-24 at most, each of a partial sum.
      worst_tight = std::max(worst_tight, std::fabs(got - finish(rounded)) / (scale * (k + 2) * 0x1p-24));
      // Each operand off by up to 2^-8 relative: a product by 2^-7 + 2^-16, summed over k.
      worst_loose = std::max(worst_loose, std::fabs(got - finish(exact)) / (scale * (0x1p-7 + 0x1p-16 + (k + 2) * 0x1p-24)));
    }
  CHECK(worst_tight <= 1.0);
  CHECK(worst_loose <= 1.0);
  // The columns beyond n and rows beyond m are never written: a 1-element-wider C would show it.
}

}  // namespace

TEST_CASE("bf16 GEMM matches the bf16-rounded reference and fp32 within bf16's precision") {
  if (!bf16::bf16_gemm_available()) {
    std::printf("VGG_SKIPPED: this CPU has no AVX512-BF16 (or the kernels are not built); bf16 GEMM not run\n");
    return;
  }
#ifdef VGG_BF16_KERNELS
  unsigned seed = 1;
  for (int m : {1, 8, 13, 64})
    for (int n : {1, 16, 17, 32, 70})
      for (int k : {1, 2, 9, 512, 513, 1100}) {
        check_gemm<false, false>(m, n, k, 1.0f, false, false, seed);
        check_gemm<true, false>(m, n, k, 1.0f, false, false, seed + 10);
        check_gemm<false, true>(m, n, k, 1.0f, false, false, seed + 20);
        seed += 30;
      }
  // The epilogue: alpha, accumulation, bias in the first pass, ReLU after the last.
  check_gemm<false, false>(21, 70, 9, -0.5f, true, false, 7);
  check_gemm<false, false>(21, 70, 1100, 1.0f, false, true, 8);
  check_gemm<true, false>(19, 45, 600, 2.0f, true, true, 9);
  // Weights packed once for many products.
  check_gemm<false, false>(24, 50, 1100, 1.0f, false, true, 10, true);
  check_gemm<true, false>(13, 33, 9, 1.0f, true, false, 11, true);
#endif
}

TEST_CASE("bf16 GEMM propagates NaN like the fp32 path") {
  if (!bf16::bf16_gemm_available()) {
    std::printf("VGG_SKIPPED: this CPU has no AVX512-BF16; bf16 NaN case not run\n");
    return;
  }
#ifdef VGG_BF16_KERNELS
  std::vector<float> a(8 * 4, 0.5f), b(4 * 32, 0.25f), c(8 * 32, 0.0f);
  a[3] = std::numeric_limits<float>::quiet_NaN();  // row 0
  vgg::Buffer<std::uint32_t> a_pack, b_pack;
  a_pack.reserve(std::size_t(8 * bf16::kKc / 2));
  b_pack.reserve(std::size_t(bf16::packed_b_size()));
  bf16::gemm<false>(8, 32, 4, a.data(), 4, b.data(), 32, c.data(), 32, a_pack.data(), b_pack.data(),
                    {1.0f, false, nullptr, true});
  for (int j = 0; j < 32; ++j) CHECK(std::isnan(c[std::size_t(j)]));
  for (int j = 0; j < 32; ++j) CHECK(c[32 + std::size_t(j)] == doctest::Approx(0.5));
#endif
}
