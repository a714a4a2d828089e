// The CPU kernels against naive references and hand-computed values.
#include <doctest/doctest.h>
#include <omp.h>

#include <vgg/vgg.hpp>

#include <array>
#include <cmath>

#include "reference.hpp"

namespace {

void check_conv(int n, int cin, int cout, int h, int w, int threads, unsigned seed) {
  CAPTURE(n);
  CAPTURE(cin);
  CAPTURE(cout);
  CAPTURE(h);
  CAPTURE(w);
  CAPTURE(threads);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * w, seed);
  const auto wt = ref::random_vector(std::size_t(cout) * cin * 9, seed + 1);
  const auto b = ref::random_vector(std::size_t(cout), seed + 2, -0.2f, 0.2f);
  const auto expected = ref::conv3x3_relu(x, wt, b, n, cin, cout, h, w);

  const vgg::cpu::Conv3x3Geometry g{cin, cout, h, w};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve(g, threads);
  std::vector<float> y(expected.size(), -7.0f);
  vgg::cpu::conv3x3_relu_forward(x.data(), wt.data(), b.data(), y.data(), n, g, ws, threads);
  CHECK(ref::max_abs_diff(expected, y.data()) < 1e-4f * std::sqrt(float(cin * 9)));
}

}  // namespace

TEST_CASE("conv3x3 + ReLU matches a direct convolution over random shapes and thread counts") {
  unsigned seed = 1;
  for (int threads : {1, 2, 3})
    for (int n : {1, 5}) {
      check_conv(n, 1, 8, 7, 9, threads, seed++);      // C_in = 1, odd H/W
      check_conv(n, 1, 3, 31, 29, threads, seed++);
      check_conv(n, 3, 5, 1, 1, threads, seed++);      // 1x1 image: only the centre tap
      check_conv(n, 16, 24, 13, 11, threads, seed++);
      check_conv(n, 2, 4, 97, 75, threads, seed++);    // several bands per image
    }
}

TEST_CASE("conv band splitting covers every row when bands are narrower than the image") {
  const vgg::cpu::Conv3x3Geometry g{1, 2, 200, 60};
  CHECK(g.max_band_rows() < g.h);  // the shape exercises multi-band images
  check_conv(2, 1, 2, 200, 60, 2, 99);
  // Fewer images than threads: bands shrink so every thread has work.
  CHECK(g.forward_bands(1, 4, false).count >= 4);
  CHECK(g.forward_bands(1, 4, true).count >= 4);
  check_conv(1, 1, 2, 200, 60, 4, 100);
}

TEST_CASE("band splits cover every row once, in bands of nearly equal height") {
  for (int h : {1, 2, 3, 7, 14, 28, 29, 56, 224})
    for (int wanted : {1, 2, 3, 4, 9, 100})
      for (bool even : {false, true}) {
        CAPTURE(h);
        CAPTURE(wanted);
        CAPTURE(even);
        const vgg::cpu::BandSplit split = vgg::cpu::BandSplit::of(h, wanted, even);
        REQUIRE(split.count >= 1);
        CHECK(split.begin(0) == 0);
        CHECK(split.begin(split.count) == h);
        int lowest = h, highest = 0;
        for (int i = 0; i < split.count; ++i) {
          const int rows = split.begin(i + 1) - split.begin(i);
          CHECK(rows >= 1);  // no empty band
          if (even) CHECK(split.begin(i) % 2 == 0);  // whole pooling windows
          if (i + 1 < split.count || !even || h % 2 == 0) {
            lowest = std::min(lowest, rows);
            highest = std::max(highest, rows);
          }
        }
        CHECK(highest - lowest <= (even ? 2 : 1));  // balanced: no remainder band of a row or two
      }
  // The budgets measured on a 1 MiB-L2 CPU, whatever this one is.
  const auto measured = vgg::cpu::ConvCacheBudget::for_caches({32L << 10, 1L << 20, 0});
  CHECK(measured.band_bytes == 512L << 10);
  CHECK(measured.resident_gradient_bytes == 2L << 20);
  // 28 rows at most 9 per band: 4 bands of 7, not 9 + 9 + 9 + 1.
  const vgg::cpu::Conv3x3Geometry g{512, 512, 28, 28, measured};
  CHECK(g.max_band_rows() == 9);
  CHECK(g.forward_bands(8, 2, false).count == 4);
  CHECK(g.forward_bands(8, 2, false).begin(3) == 21);
  // A weight gradient over 2 MB (512 x 4608 floats) takes longer bands in the backward.
  CHECK(g.backward_bands().count < g.forward_bands(8, 2, false).count);
  CHECK(vgg::cpu::Conv3x3Geometry{64, 128, 112, 112, measured}.backward_bands().count ==
        vgg::cpu::Conv3x3Geometry{64, 128, 112, 112, measured}.forward_bands(8, 2, false).count);
  // A 2 MiB L2 takes a shallow layer's columns in bands twice as long, and keeps a 2.4 MB gradient
  // (256 x 2304 floats) resident where a 1 MiB L2 takes longer backward bands.
  const auto larger = vgg::cpu::ConvCacheBudget::for_caches({48L << 10, 2L << 20, 0});
  CHECK(vgg::cpu::Conv3x3Geometry{64, 128, 112, 112, larger}.max_band_rows() ==
        2 * vgg::cpu::Conv3x3Geometry{64, 128, 112, 112, measured}.max_band_rows());
  CHECK(vgg::cpu::Conv3x3Geometry{256, 256, 56, 56, larger}.backward_band_rows() ==
        vgg::cpu::Conv3x3Geometry{256, 256, 56, 56, larger}.max_band_rows());
  CHECK(vgg::cpu::Conv3x3Geometry{256, 256, 56, 56, measured}.backward_band_rows() >
        vgg::cpu::Conv3x3Geometry{256, 256, 56, 56, measured}.max_band_rows());
  // The GEMM's row blocks: an eighth of L2 of A rows (1 MiB: the 128 measured; 2 MiB: 256), within 64-512.
  CHECK(vgg::cpu::avx512::block_rows_for_l2(1L << 20) == 128);
  CHECK(vgg::cpu::avx512::block_rows_for_l2(2L << 20) == 256);
  CHECK(vgg::cpu::avx512::block_rows_for_l2(256L << 10) == 64);
  CHECK(vgg::cpu::avx512::block_rows_for_l2(64L << 20) == 512);
  CHECK(vgg::cpu::avx512::block_rows() == vgg::cpu::avx512::block_rows_for_l2(vgg::cpu::cpu_info().cache.l2));
  // 14x14 images go two to a band on the fast path (one where a thread would be left without).
  const vgg::cpu::Conv3x3Geometry small{512, 512, 14, 14, measured};
  CHECK(small.images_per_band(8, 2) == 2);
  CHECK(small.images_per_band(1, 2) == 1);
  CHECK(g.images_per_band(8, 2) == 1);  // 28x28: 784 columns already
  CHECK(vgg::cpu::Conv3x3Geometry{1, 64, 14, 14}.images_per_band(8, 2) == 1);  // one channel: own kernels
}

TEST_CASE("conv on a hand-computed example") {
  // 1 input channel 3x3, all ones; kernel all ones; bias -4.5: each output is (#valid taps) - 4.5.
  std::vector<float> x(9, 1.0f), w(9, 1.0f), b{-4.5f};
  const vgg::cpu::Conv3x3Geometry g{1, 1, 3, 3};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve(g, 1);
  std::vector<float> y(9);
  vgg::cpu::conv3x3_relu_forward(x.data(), w.data(), b.data(), y.data(), 1, g, ws, 1);
  // corners: 4 taps -> ReLU(-0.5) = 0; edges: 6 -> 1.5; centre: 9 -> 4.5
  const std::vector<float> expected{0, 1.5f, 0, 1.5f, 4.5f, 1.5f, 0, 1.5f, 0};
  for (int i = 0; i < 9; ++i) CHECK(y[std::size_t(i)] == doctest::Approx(expected[std::size_t(i)]));
}

TEST_CASE("max-pool 2x2 stride 2 on hand-computed values, floor rule for odd sizes") {
  // 1 plane of 3 x 5: the last row and column are dropped, output 1 x 2.
  const std::vector<float> x{1, 5, 2, 0, 9,   //
                             3, -1, 7, 8, 9,  //
                             9, 9, 9, 9, 9};
  std::vector<float> y(2, -1);
  vgg::cpu::maxpool2x2_forward(x.data(), y.data(), 1, 3, 5, 1);
  CHECK(y[0] == 5.0f);
  CHECK(y[1] == 8.0f);
  // negative values survive (no implicit ReLU in the pool)
  const std::vector<float> neg{-4, -3, -2, -1};
  float out = 0;
  vgg::cpu::maxpool2x2_forward(neg.data(), &out, 1, 2, 2, 1);
  CHECK(out == -1.0f);
}

TEST_CASE("max-pool matches the reference over many planes and threads") {
  const int planes = 7, h = 13, w = 10;
  const auto x = ref::random_vector(std::size_t(planes) * h * w, 5);
  const auto expected = ref::maxpool2x2(x, planes, h, w);
  for (int threads : {1, 2, 3}) {
    std::vector<float> y(expected.size());
    vgg::cpu::maxpool2x2_forward(x.data(), y.data(), planes, h, w, threads);
    CHECK(ref::max_abs_diff(expected, y.data()) == 0.0f);
  }
}

TEST_CASE("linear on hand-computed values, with and without ReLU") {
  // y = x W^T + b with W = [[1, 2], [-3, 4], [0, -1]], b = [0.5, 0, -2], x = [[1, 1], [2, -1]].
  const std::vector<float> x{1, 1, 2, -1}, w{1, 2, -3, 4, 0, -1}, b{0.5f, 0, -2};
  vgg::cpu::LinearWorkspace ws;
  ws.reserve(2, 2, 3, 2);
  std::vector<float> y(6);
  vgg::cpu::linear_forward(x.data(), w.data(), b.data(), y.data(), 2, 2, 3, false, ws, 2);
  const std::vector<float> plain{3.5f, 1, -3, 0.5f, -10, -1};
  for (int i = 0; i < 6; ++i) CHECK(y[std::size_t(i)] == doctest::Approx(plain[std::size_t(i)]));
  vgg::cpu::linear_forward(x.data(), w.data(), b.data(), y.data(), 2, 2, 3, true, ws, 2);
  const std::vector<float> relu{3.5f, 1, 0, 0.5f, 0, 0};
  for (int i = 0; i < 6; ++i) CHECK(y[std::size_t(i)] == doctest::Approx(relu[std::size_t(i)]));
}

TEST_CASE("linear matches the reference for wide layers and several thread counts") {
  const int n = 5, in = 300, out = 37;
  const auto x = ref::random_vector(std::size_t(n) * in, 11);
  const auto w = ref::random_vector(std::size_t(out) * in, 12);
  const auto b = ref::random_vector(std::size_t(out), 13);
  const auto expected = ref::linear(x, w, b, n, in, out, true);
  for (int threads : {1, 2, 3}) {
    vgg::cpu::LinearWorkspace ws;
    ws.reserve(n, in, out, threads);
    std::vector<float> y(expected.size());
    vgg::cpu::linear_forward(x.data(), w.data(), b.data(), y.data(), n, in, out, true, ws, threads);
    CHECK(ref::max_abs_diff(expected, y.data()) < 1e-4f);
  }
}

TEST_CASE("dropout keeps about 1-p of the elements, scales them by 1/(1-p), and is thread-independent") {
  const long count = 100000;
  std::vector<float> x(count, 2.0f), y1(count), y2(count);
  vgg::cpu::dropout_forward(x.data(), y1.data(), count, 0.5f, 42, 7, 1);
  vgg::cpu::dropout_forward(x.data(), y2.data(), count, 0.5f, 42, 7, 3);
  long kept = 0;
  for (long i = 0; i < count; ++i) {
    CHECK_MESSAGE((y1[i] == 0.0f || y1[i] == 4.0f), "element ", i, " is ", y1[i]);
    kept += y1[i] != 0.0f;
    REQUIRE(y1[i] == y2[i]);
  }
  CHECK(std::abs(double(kept) / count - 0.5) < 0.01);
  // another stream gives another mask
  vgg::cpu::dropout_forward(x.data(), y2.data(), count, 0.5f, 42, 8, 1);
  CHECK(ref::max_abs_diff(std::vector<float>(y1.begin(), y1.end()), y2.data()) > 0.0f);
}

TEST_CASE("GEMM wrapper: all four transpose combinations against a naive product") {
  const int m = 7, n = 33, k = 19;
  const auto a = ref::random_vector(std::size_t(m) * k, 21), b = ref::random_vector(std::size_t(k) * n, 22);
  std::vector<float> at(a.size()), bt(b.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) at[std::size_t(j) * m + i] = a[std::size_t(i) * k + j];
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < n; ++j) bt[std::size_t(j) * k + i] = b[std::size_t(i) * n + j];
  std::vector<float> expected(std::size_t(m) * n, 0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int l = 0; l < k; ++l) expected[std::size_t(i) * n + j] += a[std::size_t(i) * k + l] * b[std::size_t(l) * n + j];
  vgg::cpu::GemmPlan plan;
  plan.reserve(m, n, k);
  using vgg::cpu::gemm;
  std::vector<float> c(expected.size(), 0);
  gemm<false, false>(m, n, k, a.data(), k, b.data(), n, c.data(), n, plan);
  CHECK(ref::max_abs_diff(expected, c.data()) < 1e-4f);
  std::fill(c.begin(), c.end(), 0.0f);
  gemm<true, false>(m, n, k, at.data(), m, b.data(), n, c.data(), n, plan);
  CHECK(ref::max_abs_diff(expected, c.data()) < 1e-4f);
  std::fill(c.begin(), c.end(), 0.0f);
  gemm<false, true>(m, n, k, a.data(), k, bt.data(), k, c.data(), n, plan);
  CHECK(ref::max_abs_diff(expected, c.data()) < 1e-4f);
  std::fill(c.begin(), c.end(), 0.0f);
  gemm<true, true>(m, n, k, at.data(), m, bt.data(), k, c.data(), n, plan);
  CHECK(ref::max_abs_diff(expected, c.data()) < 1e-4f);
  // accumulates with alpha
  gemm<false, false>(m, n, k, a.data(), k, b.data(), n, c.data(), n, plan, -1.0f);
  CHECK(ref::max_abs_diff(std::vector<float>(c.size(), 0.0f), c.data()) < 1e-4f);
}

TEST_CASE("max-pool backward with the ReLU mask equals the pool's backward, then the mask") {
  // x is a ReLU output (many exact zeros, some all-zero windows); the pool with relu_mask must equal
  // the pool without it followed by the ReLU's mask (x > 0), in both the plain and the default path.
  const int planes = 6, h = 9, w = 13;
  auto x = ref::random_vector(std::size_t(planes) * h * w, 77);
  for (float& v : x) v = std::max(v, 0.0f);
  for (int i = 0; i < 4; ++i) x[std::size_t(i)] = 0.0f;  // the first window is all zero
  const auto dy = ref::random_vector(std::size_t(planes) * (h / 2) * (w / 2), 78);
  std::vector<float> expected(x.size()), masked(x.size()), masked_plain(x.size());
  vgg::cpu::maxpool2x2_backward_plain(x.data(), dy.data(), expected.data(), planes, h, w, 2);
  int zeroed = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!(x[i] > 0.0f) && expected[i] != 0.0f) {
      expected[i] = 0.0f;
      ++zeroed;
    }
  CHECK(zeroed > 0);  // the case exercises the mask
  vgg::cpu::maxpool2x2_backward(x.data(), dy.data(), masked.data(), planes, h, w, 2, /*relu_mask=*/true);
  vgg::cpu::maxpool2x2_backward_plain(x.data(), dy.data(), masked_plain.data(), planes, h, w, 2, true);
  CHECK(ref::max_abs_diff(expected, masked.data()) == 0.0f);
  CHECK(ref::max_abs_diff(expected, masked_plain.data()) == 0.0f);
}

TEST_CASE("conv backward through a fused pool equals pool backward, then conv backward") {
  // The fast path keeps only winner masks; for C_in = 1 the gradients then come straight from them,
  // or through a full-size dz when the input gradient is asked for. Ties (a constant input gives
  // equal values across a window) and non-positive windows exercise the masks' order and the ReLU.
  for (auto [n, cin, cout, h, w] : {std::array{2, 3, 6, 8, 10}, std::array{3, 2, 9, 7, 9}, std::array{1, 1, 8, 34, 40},
                                    std::array{2, 1, 5, 9, 37}, std::array{3, 1, 8, 36, 224}})
    for (int threads : {1, 2, 3})
      for (bool constant : {false, true})
        for (bool with_dx : {true, false}) {
          CAPTURE(cin);
          CAPTURE(h);
          CAPTURE(w);
          CAPTURE(threads);
          CAPTURE(constant);
          CAPTURE(with_dx);
          const vgg::cpu::Conv3x3Geometry g{cin, cout, h, w};
          auto x = ref::random_vector(std::size_t(n) * cin * h * w, 79);
          auto wt = ref::random_vector(std::size_t(cout) * cin * 9, 80);
          auto b = ref::random_vector(std::size_t(cout), 81);
          if (constant) {  // half the batch constant: ties; multiples of 1/64 make every sum exact,
            std::fill(x.begin(), x.end() - long(x.size() / 2), 0.5f);  // so all paths see the same ties
            for (auto* v : {&x, &wt, &b})
              for (float& e : *v) e = std::round(e * 64.0f) / 64.0f;
          }
          std::vector<float> y(std::size_t(n) * cout * h * w), pooled(std::size_t(n) * cout * (h / 2) * (w / 2));
          vgg::cpu::Conv3x3Workspace ws;
          ws.reserve_backward(g, threads, /*pooled=*/true);
          vgg::cpu::conv3x3_relu_forward(x.data(), wt.data(), b.data(), y.data(), n, g, ws, threads);
          const auto dp = ref::random_vector(pooled.size(), 82);
          // Unfused: the pool's backward into a full-size dy, then the conv's backward.
          std::vector<float> dy(y.size()), dx1(x.size()), dw1(wt.size()), db1(b.size());
          vgg::cpu::maxpool2x2_backward(y.data(), dp.data(), dy.data(), long(n) * cout, h, w, threads);
          vgg::cpu::conv3x3_relu_backward(x.data(), wt.data(), y.data(), dy.data(), dx1.data(), dw1.data(), db1.data(),
                                          n, g, ws, threads);
          auto fused = [&]<vgg::cpu::KernelPath Path>() {
            const bool plain = Path == vgg::cpu::KernelPath::plain;
            CAPTURE(plain);
            vgg::cpu::PoolState<Path> state;
            state.reserve(g, n);
            std::vector<float> p(pooled.size());
            std::vector<float> dx2(x.size(), 9.0f), dw2(wt.size(), 9.0f), db2(b.size(), 9.0f);
            vgg::cpu::conv3x3_relu_pool_forward<Path>(x.data(), wt.data(), b.data(), p.data(), state, n, g, ws,
                                                      threads);
            vgg::cpu::conv3x3_relu_pool_backward<Path>(x.data(), wt.data(), state, dp.data(),
                                                       with_dx ? dx2.data() : nullptr, dw2.data(), db2.data(), n, g,
                                                       ws, threads);
            const float tol = plain ? 1e-4f : 1e-5f;
            if (with_dx) CHECK(ref::max_abs_diff(dx1, dx2.data()) <= tol);
            CHECK(ref::max_abs_diff(dw1, dw2.data()) <= tol * 10);
            CHECK(ref::max_abs_diff(db1, db2.data()) <= tol * 10);
          };
          fused.template operator()<vgg::cpu::fastest_path>();
          fused.template operator()<vgg::cpu::KernelPath::plain>();
        }
}

TEST_CASE("conv with the 2x2 max-pool fused in equals conv then pool, on both paths") {
  // Odd heights (the floor rule drops a row), several bands per image, 1-3 threads.
  // C_in = 1 has a path of its own on AVX-512 (pool from registers, two rows at a time).
  for (auto [n, cin, cout, h, w] : {std::array{2, 3, 5, 9, 11}, std::array{1, 2, 4, 97, 75}, std::array{3, 8, 16, 14, 14},
                                    std::array{1, 1, 8, 2, 2}, std::array{2, 1, 8, 33, 37}, std::array{1, 1, 5, 40, 48},
                                    std::array{1, 1, 3, 7, 1}, std::array{1, 1, 3, 1, 7},
                                    std::array{2, 1, 32, 6, 64}})  // 32+ planes, whole pooled lines: streamed
    for (int threads : {1, 2, 3}) {
      CAPTURE(cin);
      CAPTURE(h);
      CAPTURE(w);
      CAPTURE(threads);
      const vgg::cpu::Conv3x3Geometry g{cin, cout, h, w};
      const auto x = ref::random_vector(std::size_t(n) * cin * h * w, unsigned(h * w + threads));
      const auto wt = ref::random_vector(std::size_t(cout) * cin * 9, 5);
      const auto b = ref::random_vector(std::size_t(cout), 6);
      const std::size_t out = std::size_t(n) * cout * h * w, pooled = std::size_t(n) * cout * (h / 2) * (w / 2);
      vgg::cpu::Conv3x3Workspace ws;
      ws.reserve(g, threads);
      std::vector<float> y(out), expected(pooled), y_plain(out);
      vgg::cpu::conv3x3_relu_forward(x.data(), wt.data(), b.data(), y.data(), n, g, ws, threads);
      vgg::cpu::maxpool2x2_forward(y.data(), expected.data(), long(n) * cout, h, w, threads);
      vgg::cpu::conv3x3_relu_forward<vgg::cpu::KernelPath::plain>(x.data(), wt.data(), b.data(), y_plain.data(), n, g,
                                                                  ws, threads);
      CHECK(ref::max_abs_diff(y, y_plain.data()) < 1e-4f);
      std::vector<float> p3(pooled, -2.0f);
      vgg::Buffer<float> p2(pooled);  // 64-byte aligned, as the network's buffers (streamed stores need it)
      std::fill(p2.data(), p2.data() + pooled, -1.0f);
      vgg::cpu::PoolState<vgg::cpu::fastest_path> s2;
      vgg::cpu::PoolState<vgg::cpu::KernelPath::plain> s3;
      s2.reserve(g, n);
      s3.reserve(g, n);
      vgg::cpu::conv3x3_relu_pool_forward(x.data(), wt.data(), b.data(), p2.data(), s2, n, g, ws, threads);
      // Pooling bands have an even row count, so the GEMMs split differently: Eigen's (the plain
      // path) may round differently, ours sums in the same order whatever the split.
      const float tol = vgg::cpu::kFastKernels ? 0.0f : 1e-5f;
      CHECK(ref::max_abs_diff(expected, p2.data()) <= tol);
      // The state is the full-size output, except where only winner masks are kept.
      if (!s2.keeps_winners) CHECK(ref::max_abs_diff(y, s2.outputs()) <= tol);
      vgg::cpu::conv3x3_relu_pool_forward(x.data(), wt.data(), b.data(), p3.data(), s3, n, g, ws, threads);
      CHECK(ref::max_abs_diff(y, s3.outputs()) < 1e-4f);
      CHECK(ref::max_abs_diff(expected, p3.data()) < 1e-4f);
    }
}
