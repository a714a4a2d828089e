// Every fast path against the plain path it replaces (Eigen GEMM, separate bias and ReLU passes), on shapes
// chosen to hit each edge: tiles cut short in rows and columns, several depth passes, 1-pixel and
// narrow images, odd channel counts, 1-3 threads. Where the fast kernels are not built (no AVX-512
// target, or VGG_PLAIN_KERNELS), the suite reports itself skipped through CTest.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "reference.hpp"

namespace {

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float e : v) m = std::max(m, std::abs(e));
  return m;
}

template <bool TransA, bool TransB = false>
void check_gemm(int m, int n, int k, float alpha, bool overwrite, unsigned seed, bool bias_relu = false) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(TransA);
  CAPTURE(TransB);
  CAPTURE(overwrite);
  CAPTURE(bias_relu);
  // Leading dimensions larger than the matrices, as the layers use them.
  const int lda = (TransA ? m : k) + 3, ldb = (TransB ? k : n) + 5, ldc = n + 2;
  const auto a = ref::random_vector(std::size_t(TransA ? k : m) * lda, seed);
  const auto b = ref::random_vector(std::size_t(TransB ? n : k) * ldb, seed + 1);
  const auto c0 = ref::random_vector(std::size_t(m) * ldc, seed + 2);
  vgg::cpu::GemmPlan plan;
  plan.reserve(m, n, k);
  const auto bias = ref::random_vector(std::size_t(m), seed + 3);
  std::vector<float> fast = c0, plain = c0;
#ifdef VGG_FAST_KERNELS
  vgg::cpu::avx512::gemm<TransA, TransB>(m, n, k, a.data(), lda, b.data(), ldb, fast.data(), ldc, plan.fast_a_pack(),
                                 plan.fast_b_pack(),
                                 vgg::cpu::avx512::Epilogue{alpha, !overwrite, bias_relu ? bias.data() : nullptr, bias_relu});
#endif
  if (overwrite)
    for (int i = 0; i < m; ++i) std::fill(plain.begin() + long(i) * ldc, plain.begin() + long(i) * ldc + n, 0.0f);
  vgg::cpu::gemm_eigen<TransA, TransB>(m, n, k, a.data(), lda, b.data(), ldb, plain.data(), ldc, plan, alpha);
#ifdef VGG_FAST_KERNELS
  {  // A packed once up front (as a layer's weights are) gives the very same result
    vgg::Buffer<float> packed(std::size_t(vgg::cpu::avx512::packed_a_size(m, k)));
    vgg::cpu::avx512::pack_a_whole<TransA>(a.data(), lda, m, k, packed.data());
    std::vector<float> again = c0;
    vgg::cpu::avx512::gemm<TransA, TransB>(
        m, n, k, nullptr, lda, b.data(), ldb, again.data(), ldc, plan.fast_a_pack(), plan.fast_b_pack(),
        vgg::cpu::avx512::Epilogue{alpha, !overwrite, bias_relu ? bias.data() : nullptr, bias_relu}, packed.data());
    CHECK(ref::max_abs_diff(fast, again.data()) == 0.0f);
  }
#endif
  if (bias_relu)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        float& e = plain[std::size_t(i) * ldc + j];
        e = std::max(e + bias[std::size_t(i)], 0.0f);
      }
  CHECK(ref::max_abs_diff(plain, fast.data()) <= 2e-6f * float(k) + 1e-6f);
}

struct ConvCase {
  int n, cin, cout, h, w;
};

void check_conv(const ConvCase& s, int threads, unsigned seed,
                const vgg::cpu::ConvCacheBudget& budget = vgg::cpu::conv_cache_budget()) {
  CAPTURE(budget.band_bytes);
  CAPTURE(s.n);
  CAPTURE(s.cin);
  CAPTURE(s.cout);
  CAPTURE(s.h);
  CAPTURE(s.w);
  CAPTURE(threads);
  const vgg::cpu::Conv3x3Geometry g{s.cin, s.cout, s.h, s.w, budget};
  const std::size_t in = std::size_t(s.n) * s.cin * s.h * s.w, out = std::size_t(s.n) * s.cout * s.h * s.w;
  const auto x = ref::random_vector(in, seed);
  const auto wt = ref::random_vector(std::size_t(s.cout) * s.cin * 9, seed + 1, -0.3f, 0.3f);
  const auto b = ref::random_vector(std::size_t(s.cout), seed + 2, -0.2f, 0.2f);
  const auto dy = ref::random_vector(out, seed + 3);
  const float tol = 2e-6f * std::sqrt(float(s.cin * 9)) * 4;

  vgg::cpu::Conv3x3Workspace ws_fast, ws_plain;
  ws_fast.reserve_backward(g, threads);
  ws_plain.reserve_backward(g, threads);
  std::vector<float> y_fast(out, -7.0f), y_plain(out, -9.0f);
  vgg::cpu::conv3x3_relu_forward(x.data(), wt.data(), b.data(), y_fast.data(), s.n, g, ws_fast, threads);
  vgg::cpu::conv3x3_relu_forward<vgg::cpu::KernelPath::plain>(x.data(), wt.data(), b.data(), y_plain.data(), s.n, g,
                                                              ws_plain, threads);
  CHECK(ref::max_abs_diff(y_plain, y_fast.data()) <= tol * std::max(1.0f, max_abs(y_plain)));

  std::vector<float> dz_fast = dy, dz_plain = dy, dx_fast(in, 5.0f), dx_plain(in, 3.0f);
  std::vector<float> dw_fast(wt.size()), dw_plain(wt.size()), db_fast(b.size()), db_plain(b.size());
  vgg::cpu::conv3x3_relu_backward(x.data(), wt.data(), y_plain.data(), dz_fast.data(), dx_fast.data(), dw_fast.data(),
                                  db_fast.data(), s.n, g, ws_fast, threads);
  vgg::cpu::conv3x3_relu_backward<vgg::cpu::KernelPath::plain>(x.data(), wt.data(), y_plain.data(), dz_plain.data(),
                                                               dx_plain.data(), dw_plain.data(), db_plain.data(), s.n,
                                                               g, ws_plain, threads);
  CHECK(ref::max_abs_diff(dz_plain, dz_fast.data()) == 0.0f);
  CHECK(ref::max_abs_diff(dx_plain, dx_fast.data()) <= tol * std::max(1.0f, max_abs(dx_plain)));
  CHECK(ref::max_abs_diff(dw_plain, dw_fast.data()) <= tol * std::max(1.0f, max_abs(dw_plain)));
  CHECK(ref::max_abs_diff(db_plain, db_fast.data()) <= tol * std::max(1.0f, max_abs(db_plain)));
}

}  // namespace

TEST_CASE("fast kernels are built for this target, or the suite says it is skipped") {
  if (!vgg::cpu::kFastKernels) {
    // Matched by the test's SKIP_REGULAR_EXPRESSION: CTest then reports the test as skipped.
    std::printf("VGG_SKIPPED: the AVX-512 kernels are not built for this target; nothing to compare\n");
  }
  CHECK(vgg::cpu::kFastKernels == bool(VGG_EXPECT_FAST_KERNELS) + 0);
}

TEST_CASE("AVX-512 GEMM matches Eigen's on edge-cutting shapes" * doctest::skip(!vgg::cpu::kFastKernels)) {
  unsigned seed = 1;
  for (int m : {1, 7, 8, 9, 24, 67})
    for (int n : {1, 31, 32, 33, 70})
      for (int k : {1, 9, 256, 257, 600}) {
        check_gemm<false>(m, n, k, 1.0f, false, seed);
        check_gemm<true>(m, n, k, 1.0f, false, seed + 10);
        check_gemm<false, true>(m, n, k, 1.0f, false, seed + 20);
        check_gemm<true, true>(m, n, k, 1.0f, false, seed + 30);
        seed += 40;
      }
  check_gemm<false>(19, 45, 300, -0.5f, false, 7);
  check_gemm<true>(19, 45, 300, 2.0f, true, 8);
  check_gemm<true>(64, 100, 8, 1.0f, true, 9);
  check_gemm<false>(64, 100, 600, 1.0f, true, 10);
  check_gemm<false, true>(40, 75, 777, -1.5f, false, 13);
  // Rows over one block (block_rows(): 128 for a 1 MiB L2, 256 for 2 MiB), with a short last block.
  check_gemm<false>(300, 70, 300, 1.0f, false, 14);
  check_gemm<false>(520, 33, 40, 1.0f, true, 15, true);
  // Bias in the first depth pass, ReLU in the last, with one, two and three passes.
  for (int k : {9, 300, 600}) {
    check_gemm<false>(21, 70, k, 1.0f, true, 11, true);
    check_gemm<true>(21, 70, k, 1.0f, false, 12, true);
  }
}

/// The linear forward of n rows on the AVX-512 path (the few-row kernel where n <= 8, else the GEMM)
/// against the plain path; and, where n <= 8, the very result of the few-row kernel called alone.
void check_linear(int n, int in, int out, bool relu, int threads, unsigned seed) {
  CAPTURE(n);
  CAPTURE(in);
  CAPTURE(out);
  CAPTURE(relu);
  CAPTURE(threads);
  const auto x = ref::random_vector(std::size_t(n) * in, seed);
  const auto w = ref::random_vector(std::size_t(out) * in, seed + 1);
  const auto b = ref::random_vector(std::size_t(out), seed + 2);
  vgg::cpu::LinearWorkspace ws;
  ws.reserve(n, in, out, threads);
  std::vector<float> fast(std::size_t(n) * out, 7.0f), plain = fast;
  vgg::cpu::linear_forward<vgg::cpu::KernelPath::avx512>(x.data(), w.data(), b.data(), fast.data(), n, in, out, relu, ws,
                                                         threads);
  vgg::cpu::linear_forward<vgg::cpu::KernelPath::plain>(x.data(), w.data(), b.data(), plain.data(), n, in, out, relu,
                                                        ws, threads);
  // Both sum in fp32, in different orders: in roundings of 2^-24 of the sum of magnitudes (< in).
  CHECK(ref::max_abs_diff(fast, plain.data()) <= float(in + 2) * 0x1p-24f * float(in));
#ifdef VGG_FAST_KERNELS
  if (n <= vgg::cpu::few_rows::kMaxRows) {
    std::vector<float> alone(std::size_t(n) * out);
    vgg::cpu::few_rows::linear(x.data(), in, n, w.data(), in, b.data(), alone.data(), out, 0, out);
    if (relu)
      for (float& v : alone) v = std::max(v, 0.0f);
    CHECK(ref::max_abs_diff(fast, alone.data()) == 0.0f);
  }
#endif
}

TEST_CASE("linear forward of a few rows (W read row by row) and of many (GEMM) match the plain path" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  unsigned seed = 900;
  // Depths under, at and over a vector, with a tail; odd and single output counts; 1 to 9 rows.
  for (const int in : {1, 15, 16, 17, 100, 300})
    for (const int out : {1, 2, 3, 33})
      for (const int n : {1, 2, 5, 8, 9}) {
        check_linear(n, in, out, (seed & 1) != 0, 1 + int(seed % 3), seed);
        ++seed;
      }
  check_linear(3, 3136, 512, true, 2, seed++);  // the recipe's first classifier layer
}

TEST_CASE("fast convolution forward and backward match the plain path" * doctest::skip(!vgg::cpu::kFastKernels)) {
  unsigned seed = 100;
  const ConvCase cases[] = {
      {2, 1, 8, 28, 28},   // C_in = 1 (9-deep), one full tile
      {1, 1, 3, 5, 40},    // fewer channels than a tile
      {2, 1, 11, 9, 33},   // C_in = 1 (its own kernel): a row of 2 vectors + 1 lane
      {1, 1, 4, 3, 1},     // C_in = 1, one-pixel rows
      {3, 3, 13, 7, 9},    // odd everything
      {2, 5, 9, 1, 1},     // 1-pixel images: only the centre tap is inside
      {1, 2, 16, 2, 3},    // panels spanning many image rows
      {2, 29, 17, 6, 14},  // depth 261: two depth passes (bias in the first, ReLU in the last)
      {1, 64, 24, 14, 14}, // depth 576: three passes
      {2, 8, 16, 33, 35},  // several bands, rows longer than a panel
      {5, 3, 10, 7, 9},    // small images side by side in a band: groups of 5, 3 + 2 or 2 + 2 + 1
      {3, 16, 40, 14, 14}, // 14x14: two images per band, an odd batch
      {3, 32, 20, 7, 14},  // groups of 3, depth 288: a slice of 256 rows that ends inside a channel
  };
  for (int threads : {1, 2, 3})
    for (const ConvCase& c : cases) check_conv(c, threads, seed++);
  // The band split follows the CPU's caches (ConvCacheBudget): the splits of the pool's other CPU
  // kind (2 MiB L2) and of a small-cache CPU are checked here too, whatever this machine is.
  for (long l2 : {2L << 20, 64L << 10}) {
    const auto budget = vgg::cpu::ConvCacheBudget::for_caches({48L << 10, l2, 0});
    for (const ConvCase& c : cases) check_conv(c, 2, seed++, budget);
  }
}

TEST_CASE("fast max-pool forward and backward match the plain path, ties included" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  unsigned seed = 500;
  for (auto [planes, h, w] : {std::array{3, 2, 2}, std::array{2, 7, 5}, std::array{4, 14, 14}, std::array{2, 9, 33},
                              std::array{1, 6, 64}, std::array{3, 5, 71}})
    for (int threads : {1, 2}) {
      CAPTURE(h);
      CAPTURE(w);
      CAPTURE(threads);
      auto x = ref::random_vector(std::size_t(planes) * h * w, seed++);
      for (float& v : x) v = std::round(v * 2.0f) / 2.0f;  // 5 distinct values: many tied windows
      const std::size_t out = std::size_t(planes) * (h / 2) * (w / 2);
      const auto dy = ref::random_vector(out, seed++);
      std::vector<float> y_fast(out, 1.0f), y_plain(out, 2.0f);
      std::vector<float> dx_fast(x.size(), 3.0f), dx_plain(x.size(), 4.0f);
      vgg::cpu::maxpool2x2_forward(x.data(), y_fast.data(), planes, h, w, threads);
      vgg::cpu::maxpool2x2_forward_plain(x.data(), y_plain.data(), planes, h, w, threads);
      CHECK(ref::max_abs_diff(y_plain, y_fast.data()) == 0.0f);
      vgg::cpu::maxpool2x2_backward(x.data(), dy.data(), dx_fast.data(), planes, h, w, threads);
      vgg::cpu::maxpool2x2_backward_plain(x.data(), dy.data(), dx_plain.data(), planes, h, w, threads);
      CHECK(ref::max_abs_diff(dx_plain, dx_fast.data()) == 0.0f);
    }
}

namespace {
// im2col3x3 by its definition: col[(d - d0) * ld + (r - r0) * w + x] = in[ci][r + ky - 1][x + kx - 1],
// zero outside the image.
std::vector<float> im2col_by_definition(const std::vector<float>& in, int h, int w, int r0, int r1, long ld,
                                        long d0, long d1) {
  std::vector<float> col(std::size_t((d1 - d0) * ld), -7.0f);  // the stride's padding is left as it was
  for (long d = d0; d < d1; ++d) {
    const int ci = int(d / 9), ky = int(d % 9) / 3, kx = int(d % 3);
    for (int r = r0; r < r1; ++r)
      for (int x = 0; x < w; ++x) {
        const int yy = r + ky - 1, xx = x + kx - 1;
        col[std::size_t((d - d0) * ld + long(r - r0) * w + x)] =
            yy >= 0 && yy < h && xx >= 0 && xx < w ? in[std::size_t((long(ci) * h + yy) * w + xx)] : 0.0f;
      }
  }
  return col;
}
}  // namespace

// im2col3x3 copies each tap's run with its own vector loop on the AVX-512 path (not memcpy): runs of
// every length mod 64 and 16, rows cut at the image's top and bottom, depth ranges starting mid
// channel, against the definition.
TEST_CASE("im2col3x3 matches its definition for every run length") {
  for (int w : {1, 2, 3, 7, 14, 16, 17, 31, 33, 64, 65, 97}) {
    for (int h : {1, 2, 5}) {
      const int cin = 2;
      const auto in = ref::random_vector(std::size_t(cin) * h * w, unsigned(w * 10 + h));
      for (auto [r0, r1] : {std::pair{0, h}, std::pair{h / 2, h}, std::pair{0, (h + 1) / 2}}) {
        if (r1 <= r0) continue;
        for (auto [d0, d1] : {std::pair{0L, 18L}, std::pair{4L, 13L}}) {
          CAPTURE(w);
          CAPTURE(h);
          CAPTURE(r0);
          CAPTURE(r1);
          CAPTURE(d0);
          const long ld = long(r1 - r0) * w + 3;
          const auto want = im2col_by_definition(in, h, w, r0, r1, ld, d0, d1);
          std::vector<float> got(want.size(), -7.0f);
          vgg::cpu::im2col3x3(in.data(), cin, h, w, r0, r1, got.data(), ld, d0, d1);
          CHECK(got == want);
        }
      }
    }
  }
}

// The shallow layers' forward straight from the input rows (conv3x3_direct.hpp, 2-8 input channels),
// without a ReLU as a conv before batch norm runs it: rows shorter and longer than its 32-pixel step,
// one-pixel images, output channels not a multiple of its 8, against the plain path.
TEST_CASE("the direct forward of a shallow conv matches the plain path without a ReLU" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  unsigned seed = 300;
  for (auto [n, cin, cout, h, w] : {std::array{2, 2, 5, 3, 1}, std::array{1, 8, 16, 5, 33}, std::array{3, 3, 9, 1, 7},
                                    std::array{2, 5, 8, 6, 64}, std::array{1, 7, 17, 4, 70}}) {
    for (int threads : {1, 2}) {
      CAPTURE(cin);
      CAPTURE(cout);
      CAPTURE(h);
      CAPTURE(w);
      CAPTURE(threads);
      const vgg::cpu::Conv3x3Geometry g{cin, cout, h, w};
      REQUIRE(g.direct_rows());
      const auto x = ref::random_vector(std::size_t(n) * cin * h * w, seed++);
      const auto wt = ref::random_vector(std::size_t(cout) * cin * 9, seed++);
      const auto b = ref::random_vector(std::size_t(cout), seed++);
      vgg::cpu::Conv3x3Workspace ws_fast, ws_plain;
      ws_fast.reserve(g, threads);
      ws_plain.reserve(g, threads);
      std::vector<float> y_fast(std::size_t(n) * cout * h * w, -7.0f), y_plain(y_fast.size(), -9.0f);
      vgg::cpu::conv3x3_forward(x.data(), wt.data(), b.data(), y_fast.data(), n, g, ws_fast, threads);
      vgg::cpu::conv3x3_forward<vgg::cpu::KernelPath::plain>(x.data(), wt.data(), b.data(), y_plain.data(), n, g,
                                                             ws_plain, threads);
      CHECK(ref::max_abs_diff(y_plain, y_fast.data()) <= 1e-5f * std::max(1.0f, max_abs(y_plain)));
      CHECK(*std::min_element(y_fast.begin(), y_fast.end()) < 0.0f);  // no ReLU applied
    }
  }
}
