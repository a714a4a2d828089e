// Winograd F(2x2, 3x3) convolution (winograd.hpp), forward and input gradient, against a naive
// direct convolution in double and against the library's direct path (im2col + GEMM), on both kernel
// paths where built: odd sizes (partial tiles), one-pixel images, 1-3 threads, VGG-like widths.
//
// Tolerance, from F(2x2, 3x3)'s error growth: |V| <= 4 max|d| (B^T d B: sums of 4 inputs per side,
// coefficients +-1), |U| <= 2.25 max|g| (G's rows sum to at most 1.5 in absolute value), the GEMM
// sums c products (c = input channels) with relative error ~ (c + 4) eps, and A^T m A sums 9
// products of M: |y - y_exact| <= 81 (c + 6) eps max|g| max|d|. The errors seen here are 35x or
// more below it; a filter off by 0.05 in one tap (checked below) is well above it.
#include <doctest/doctest.h>

#include <vgg/cpu/conv3x3.hpp>
#include <vgg/cpu/winograd.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "reference.hpp"

namespace {

using vgg::cpu::KernelPath;

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float e : v) m = std::max(m, std::abs(e));
  return m;
}

/// The stated bound for a convolution summing over `channels` input channels.
float winograd_tolerance(int channels, float max_g, float max_d) {
  return 81.0f * float(channels + 6) * FLT_EPSILON * max_g * max_d;
}

/// The weight gradient's bound, as the forward's: |B^T x B| <= 4 max|x|, |A dz A^T| <= 4 max|dz|, each
/// of the 16 sums adds `terms` products (relative error ~ terms eps), and G^T m G adds 9 of them with
/// coefficients whose absolute values sum to 2.25.
float weight_grad_tolerance(long terms, float max_x, float max_dz) {
  return 2.25f * 16.0f * float(terms + 6) * FLT_EPSILON * max_x * max_dz;
}

/// Direct convolution (no ReLU), in double.
std::vector<float> naive_conv(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                              int n, int cin, int cout, int h, int wd, bool relu) {
  std::vector<float> y(std::size_t(n) * cout * h * wd);
  for (int i = 0; i < n; ++i)
    for (int co = 0; co < cout; ++co)
      for (int r = 0; r < h; ++r)
        for (int c = 0; c < wd; ++c) {
          double acc = b.empty() ? 0.0 : b[std::size_t(co)];
          for (int ci = 0; ci < cin; ++ci)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int sy = r + ky - 1, sx = c + kx - 1;
                if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
                acc += double(w[((std::size_t(co) * cin + ci) * 3 + ky) * 3 + kx]) *
                       x[((std::size_t(i) * cin + ci) * h + sy) * wd + sx];
              }
          y[((std::size_t(i) * cout + co) * h + r) * wd + c] = float(relu ? std::max(acc, 0.0) : acc);
        }
  return y;
}

/// Input gradient of a stride-1 pad-1 convolution for output gradient dz, in double.
std::vector<float> naive_input_grad(const std::vector<float>& dz, const std::vector<float>& w, int n, int cin,
                                    int cout, int h, int wd) {
  std::vector<float> dx(std::size_t(n) * cin * h * wd);
  for (int i = 0; i < n; ++i)
    for (int ci = 0; ci < cin; ++ci)
      for (int r = 0; r < h; ++r)
        for (int c = 0; c < wd; ++c) {
          double acc = 0.0;  // dx(r, c) = sum dz(r - ky + 1, c - kx + 1) w(ky, kx)
          for (int co = 0; co < cout; ++co)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int sy = r - ky + 1, sx = c - kx + 1;
                if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
                acc += double(w[((std::size_t(co) * cin + ci) * 3 + ky) * 3 + kx]) *
                       dz[((std::size_t(i) * cout + co) * h + sy) * wd + sx];
              }
          dx[((std::size_t(i) * cin + ci) * h + r) * wd + c] = float(acc);
        }
  return dx;
}

/// With pool, the fused 2x2 max-pool's output instead of y.
/// The filter's bf16 copy and bf16 GEMMs (bf16 mode's Winograd) where bf16; the AVX-512 path only.
template <KernelPath Path>
void use_bf16([[maybe_unused]] vgg::cpu::WinogradFilter<Path>& u, [[maybe_unused]] vgg::cpu::WinogradWorkspace& ws,
              [[maybe_unused]] int threads, bool bf16) {
  if (!bf16) return;
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  if constexpr (Path == KernelPath::avx512) {
    REQUIRE(vgg::cpu::bf16::bf16_gemm_available());
    vgg::cpu::winograd_filter_to_bf16(u, threads);
    ws.bf16 = true;
    return;
  }
#endif
  FAIL("bf16 Winograd is not built");
}

template <KernelPath Path>
std::vector<float> winograd_forward(const std::vector<float>& x, const std::vector<float>& w,
                                    const std::vector<float>& b, int n, int cin, int cout, int h, int wd, int threads,
                                    bool relu, long chunk = 0, bool pool = false, bool bf16 = false) {
  const vgg::cpu::WinogradGeometry g{cin, cout, h, wd, chunk};
  vgg::cpu::WinogradFilter<Path> u;
  u.reserve(cin, cout);
  vgg::cpu::winograd_transform_filter(w.data(), u, threads);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(g, threads);
  use_bf16(u, ws, threads, bf16);
  std::vector<float> y(std::size_t(n) * cout * h * wd, -7.0f);
  std::vector<float> pooled(std::size_t(n) * cout * (h / 2) * (wd / 2), -7.0f);
  if (pool && pooled.empty()) return pooled;  // no pooling window (a 1-pixel side)
  vgg::cpu::winograd_conv3x3_forward<Path>(x.data(), u, b.data(), pool ? nullptr : y.data(), n, g, ws, threads, relu,
                                           pool ? pooled.data() : nullptr);
  return pool ? pooled : y;
}

template <KernelPath Path>
std::vector<float> winograd_input_grad(const std::vector<float>& dz, const std::vector<float>& w, int n, int cin,
                                       int cout, int h, int wd, int threads, bool bf16 = false) {
  const vgg::cpu::WinogradGeometry g{cin, cout, h, wd};
  vgg::cpu::WinogradFilter<Path> u;
  u.reserve(cout, cin);
  vgg::cpu::winograd_transform_filter_input_grad(w.data(), u, threads);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(vgg::cpu::winograd_input_grad_geometry(g), threads);
  use_bf16(u, ws, threads, bf16);
  std::vector<float> dx(std::size_t(n) * cin * h * wd, -7.0f);
  vgg::cpu::winograd_conv3x3_input_grad<Path>(dz.data(), u, dx.data(), n, g, ws, threads);
  return dx;
}

template <KernelPath Path>
void check_against_naive(int n, int cin, int cout, int h, int wd, int threads, bool relu, long chunk = 0) {
  CAPTURE(n);
  CAPTURE(cin);
  CAPTURE(cout);
  CAPTURE(h);
  CAPTURE(wd);
  CAPTURE(threads);
  CAPTURE(relu);
  CAPTURE(chunk);
  CAPTURE(int(Path));
  const unsigned seed = unsigned(n * 1000 + cin * 100 + cout * 10 + h + wd);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, seed);
  const auto w = ref::random_vector(std::size_t(cout) * cin * 9, seed + 1);
  const auto b = ref::random_vector(std::size_t(cout), seed + 2);
  const auto want = naive_conv(x, w, b, n, cin, cout, h, wd, relu);
  const auto got = winograd_forward<Path>(x, w, b, n, cin, cout, h, wd, threads, relu, chunk);
  const float tol = winograd_tolerance(cin, max_abs(w), max_abs(x));
  CHECK(ref::max_abs_diff(want, got.data()) <= tol);
  // The fused 2x2 max-pool (floor at odd edges), of the same output.
  const auto want_pooled = ref::maxpool2x2(want, n * cout, h, wd);
  const auto got_pooled = winograd_forward<Path>(x, w, b, n, cin, cout, h, wd, threads, relu, chunk, true);
  CHECK(ref::max_abs_diff(want_pooled, got_pooled.data()) <= tol);

  const auto dz = ref::random_vector(std::size_t(n) * cout * h * wd, seed + 3);
  const auto want_dx = naive_input_grad(dz, w, n, cin, cout, h, wd);
  const auto got_dx = winograd_input_grad<Path>(dz, w, n, cin, cout, h, wd, threads);
  CHECK(ref::max_abs_diff(want_dx, got_dx.data()) <= winograd_tolerance(cout, max_abs(w), max_abs(dz)));
}

/// The winner of each pooling window from winner masks (maxpool.hpp's layout): 0..3 (top left, top
/// right, bottom left, bottom right: the first bit set, as the backward reads them), -1 for none.
std::vector<int> decode_winners(const std::vector<std::uint32_t>& words, int n, int c, int h, int wd) {
  const long row = vgg::cpu::winner_row_words(wd), half = row / 2, plane = vgg::cpu::winner_plane_words(h, wd);
  const long image = vgg::cpu::winner_image_words(c, h, wd);
  std::vector<int> winners;
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < c; ++ch)
      for (int r = 0; r < h / 2; ++r)
        for (int j = 0; j < wd / 2; ++j) {
          const std::uint32_t* w = words.data() + i * image + ch * plane + r * row;
          const int k = j / 16, l = 2 * (j % 16);
          const bool bits[4] = {(w[k] >> l & 1u) != 0, (w[k] >> (l + 1) & 1u) != 0, (w[half + k] >> l & 1u) != 0,
                                (w[half + k] >> (l + 1) & 1u) != 0};
          int winner = -1;
          for (int e = 3; e >= 0; --e)
            if (bits[e]) winner = e;
          winners.push_back(winner);
        }
  return winners;
}

/// The pooled training forward (winner masks written) against the naive convolution: the pooled
/// values within the bound, and each window's winner (first maximum; none where the maximum is not
/// positive) wherever the naive values decide it by more than twice the bound (elsewhere rounding
/// may pick either, and the backward takes either).
template <KernelPath Path>
void check_pool_winners(int n, int cin, int cout, int h, int wd, int threads, long chunk = 0) {
  CAPTURE(n);
  CAPTURE(cin);
  CAPTURE(cout);
  CAPTURE(h);
  CAPTURE(wd);
  CAPTURE(threads);
  CAPTURE(chunk);
  CAPTURE(int(Path));
  const unsigned seed = unsigned(n * 1000 + cin * 100 + cout * 10 + h + wd + 5);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, seed);
  const auto w = ref::random_vector(std::size_t(cout) * cin * 9, seed + 1);
  const auto b = ref::random_vector(std::size_t(cout), seed + 2, -0.5f, 0.5f);
  const auto conv = naive_conv(x, w, b, n, cin, cout, h, wd, false);
  const float tol = winograd_tolerance(cin, max_abs(w), max_abs(x));

  const vgg::cpu::WinogradGeometry g{cin, cout, h, wd, chunk};
  vgg::cpu::WinogradFilter<Path> u;
  u.reserve(cin, cout);
  vgg::cpu::winograd_transform_filter(w.data(), u, threads);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(g, threads);
  std::vector<float> pooled(std::size_t(n) * cout * (h / 2) * (wd / 2), -7.0f);
  // Garbage first: the forward must clear every word it does not set.
  std::vector<std::uint32_t> words(std::size_t(n * vgg::cpu::winner_image_words(cout, h, wd)), 0xA5A5A5A5u);
  vgg::cpu::winograd_conv3x3_forward<Path>(x.data(), u, b.data(), nullptr, n, g, ws, threads, true, pooled.data(),
                                           words.data());
  CHECK(ref::max_abs_diff(ref::maxpool2x2(naive_conv(x, w, b, n, cin, cout, h, wd, true), n * cout, h, wd),
                          pooled.data()) <= tol);
  const auto winners = decode_winners(words, n, cout, h, wd);
  long decided = 0, wrong = 0;
  std::size_t window = 0;
  for (int p = 0; p < n * cout; ++p)
    for (int r = 0; r < h / 2; ++r)
      for (int j = 0; j < wd / 2; ++j, ++window) {
        const float* top = conv.data() + (std::size_t(p) * h + 2 * r) * wd + 2 * j;
        const float v[4] = {top[0], top[1], top[wd], top[wd + 1]};
        int best = 0;
        for (int e = 1; e < 4; ++e)
          if (v[e] > v[best]) best = e;
        float gap = std::abs(v[best]);  // to the ReLU's threshold, and to the runner-up
        for (int e = 0; e < 4; ++e)
          if (e != best) gap = std::min(gap, v[best] - v[e]);
        if (gap <= 2 * tol) continue;
        ++decided;
        wrong += winners[window] != (v[best] > 0 ? best : -1);
      }
  CHECK(wrong == 0);
  CHECK(decided >= long(winners.size()) * 9 / 10);  // the check is not vacuous
}

template <KernelPath Path>
void odd_sizes() {
  const int shapes[][2] = {{7, 9}, {1, 1}, {2, 3}, {3, 2}, {1, 6}, {5, 1}, {8, 8}, {13, 11}};
  for (const auto& s : shapes)
    for (int threads : {1, 2, 3}) check_against_naive<Path>(3, 3, 5, s[0], s[1], threads, threads == 2);
  // Chunks cut mid tile-row and mid image (32 tiles each), several chunks per thread.
  check_against_naive<Path>(3, 4, 6, 17, 15, 2, true, 32);
  check_against_naive<Path>(2, 37, 19, 9, 30, 3, false, 32);
  // Tile rows longer than one 16-tile vector (33 and 34 tiles), whole and cut by chunks.
  check_against_naive<Path>(2, 5, 7, 5, 67, 2, true);
  check_against_naive<Path>(2, 5, 7, 4, 66, 1, false, 32);
  // More input channels than one GEMM depth pass (256), on the packed filter layout, both ways.
  check_against_naive<Path>(1, 300, 13, 4, 5, 2, false);
  check_against_naive<Path>(1, 13, 300, 3, 5, 2, true);
  // The pool's winner masks: odd edges, rows of more than one mask word (more than 16 windows), runs
  // cut mid word by 32-tile chunks on several threads (the words they share ORed atomically).
  for (int threads : {1, 2, 3}) {
    check_pool_winners<Path>(3, 3, 5, 7, 9, threads);
    check_pool_winners<Path>(2, 4, 6, 13, 11, threads, 32);
  }
  check_pool_winners<Path>(2, 5, 7, 6, 67, 2);
  check_pool_winners<Path>(3, 6, 5, 9, 70, 3, 32);
  check_pool_winners<Path>(2, 8, 4, 30, 30, 2, 32);
}

}  // namespace

TEST_CASE("Winograd F(2x2,3x3) matches a naive convolution on odd sizes (plain path)") {
  odd_sizes<KernelPath::plain>();
}

// Reported skipped by doctest where the AVX-512 path is not built (VGG_PLAIN_KERNELS, or no AVX-512).
TEST_CASE("Winograd F(2x2,3x3) matches a naive convolution on odd sizes (AVX-512 path)" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
#ifdef VGG_FAST_KERNELS
  odd_sizes<KernelPath::avx512>();
#endif
}

TEST_CASE("Winograd F(2x2,3x3) matches the direct path on a VGG-like layer, forward and input gradient") {
  const int n = 2, cin = 64, cout = 64, h = 28, wd = 28, threads = 2;
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, 11);
  const auto w = ref::random_vector(std::size_t(cout) * cin * 9, 12, -0.1f, 0.1f);
  const auto b = ref::random_vector(std::size_t(cout), 13);
  const auto dz = ref::random_vector(std::size_t(n) * cout * h * wd, 14);
  const vgg::cpu::Conv3x3Geometry dg{cin, cout, h, wd};
  vgg::cpu::Conv3x3Workspace dws;
  dws.reserve_backward(dg, threads);
  std::vector<float> direct(std::size_t(n) * cout * h * wd), direct_dx(std::size_t(n) * cin * h * wd);
  std::vector<float> dw(std::size_t(cout) * cin * 9), db(static_cast<std::size_t>(cout)), dz_copy = dz;
  vgg::cpu::conv3x3_forward(x.data(), w.data(), b.data(), direct.data(), n, dg, dws, threads);
  vgg::cpu::conv3x3_backward(x.data(), w.data(), dz_copy.data(), direct_dx.data(), dw.data(), db.data(), n, dg, dws,
                             threads);
  const float tol = winograd_tolerance(cin, max_abs(w), max_abs(x));
  const float tol_dx = winograd_tolerance(cout, max_abs(w), max_abs(dz));
  // The direct path itself is checked against the naive one here too: the bound covers both.
  CHECK(ref::max_abs_diff(naive_conv(x, w, b, n, cin, cout, h, wd, false), direct.data()) <= tol);
  const auto plain = winograd_forward<KernelPath::plain>(x, w, b, n, cin, cout, h, wd, threads, false);
  CHECK(ref::max_abs_diff(direct, plain.data()) <= tol);
  CHECK(ref::max_abs_diff(direct_dx, winograd_input_grad<KernelPath::plain>(dz, w, n, cin, cout, h, wd, threads).data()) <=
        tol_dx);
#ifdef VGG_FAST_KERNELS
  const auto fast = winograd_forward<KernelPath::avx512>(x, w, b, n, cin, cout, h, wd, threads, false);
  CHECK(ref::max_abs_diff(direct, fast.data()) <= tol);
  CHECK(ref::max_abs_diff(plain, fast.data()) <= tol);
  CHECK(ref::max_abs_diff(direct_dx, winograd_input_grad<KernelPath::avx512>(dz, w, n, cin, cout, h, wd, threads).data()) <=
        tol_dx);
#endif
  // And the bound is not vacuous: a filter off by one 3x3 tap is caught.
  auto w_wrong = w;
  w_wrong[4] += 0.05f;
  const auto wrong = winograd_forward<KernelPath::plain>(x, w_wrong, b, n, cin, cout, h, wd, threads, false);
  CHECK(ref::max_abs_diff(direct, wrong.data()) > tol);
}

// The layer by Winograd (where cpu::Backend's rule picks it: C_in, C_out >= 16 on the AVX-512 path)
// against the same layer with Winograd off (Context::set_winograd(false): the direct path): forward in
// both modes, the input gradient; the cached filters follow a weight change; the pooled layer's
// training and eval passes (winner masks written by Winograd's training forward, rebuilt by the direct
// path after an eval one; dx by Winograd from the whole dz either way).

TEST_CASE("Conv3x3Relu by Winograd matches its direct path: forward, pooled eval forward, input gradient" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  using B = vgg::cpu::Backend;
  // 2 images of 16 x 16 tiles: a batch that pays for a new filter transform (kWinogradAmortisingTiles).
  constexpr int In = 256, Out = 256, H = 32, W = 32, n = 2;
  static_assert(n * (H / 2) * (W / 2) >= B::kWinogradAmortisingTiles);
  CHECK(B::winograd_rule(vgg::ConvShape{In, Out, H, W}) == vgg::cpu::kFastKernels);
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(2);
  vgg::Rng rng(7);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n);
  layer.reserve_backward(exec, n);
  const vgg::RunContext eval{vgg::Mode::eval, 1, 0, 0}, train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, 21);
  const auto dy = ref::random_vector(std::size_t(n) * Out * H * W, 23);
  const std::size_t out_size = std::size_t(n) * Out * H * W;

  for (int change = 0; change < 2; ++change) {
    // change 1: the weights move (as an optimizer step would) under both cached transforms.
    if (change) layer.weight()[5] += 0.5f;
    CAPTURE(change);
    const std::vector<float> w(layer.weight().begin(), layer.weight().end());
    const float tol = winograd_tolerance(In, max_abs(w), max_abs(x));
    // forward and backward; the backward overwrites its dy with dz = dy * (y > 0).
    struct Pass {
      std::vector<float> y, dz, dx, wg;
    };
    auto pass = [&](bool winograd, const vgg::RunContext& run) {
      exec.set_winograd(winograd);
      Pass p{std::vector<float>(out_size), dy, std::vector<float>(x.size()), {}};
      layer.forward(exec, x.data(), p.y.data(), n, run);
      layer.backward(exec, x.data(), p.y.data(), p.dz.data(), p.dx.data(), n, run);
      p.wg.assign(layer.weight_grad().begin(), layer.weight_grad().end());
      return p;
    };
    const Pass direct = pass(false, train), wino_train = pass(true, train), wino_eval = pass(true, eval);
    CHECK(ref::max_abs_diff(direct.y, wino_train.y.data()) <= tol);
    CHECK(ref::max_abs_diff(direct.y, wino_eval.y.data()) <= tol);
    // Where the two ReLU masks agree, dz is equal; they may disagree only at an output within the
    // forward bound of 0 (which side of 0 it lands on depends on summation order, hence on the
    // compiler's flags). The weight gradient takes the direct path in both, so it is equal when no
    // mask differs, and otherwise off by at most each flipped dz times the largest input it meets.
    int flips = 0, unexplained = 0;
    std::vector<float> flipped_dy_per_channel(Out, 0.0f);
    for (std::size_t i = 0; i < out_size; ++i) {
      if ((direct.y[i] > 0.0f) == (wino_train.y[i] > 0.0f)) {
        if (direct.dz[i] != wino_train.dz[i]) ++unexplained;
        continue;
      }
      ++flips;
      if (!(std::abs(direct.y[i]) <= tol && std::abs(wino_train.y[i]) <= tol)) ++unexplained;
      flipped_dy_per_channel[(i / (H * W)) % Out] += std::abs(dy[i]);
    }
    CAPTURE(flips);
    CHECK(unexplained == 0);
    const float flip_bound = *std::max_element(flipped_dy_per_channel.begin(), flipped_dy_per_channel.end()) * max_abs(x);
    // Where the layer's Winograd sums fit the cache, the weight gradient is Winograd's too: within its
    // bound (plus the flips'); otherwise the direct path's in both passes, equal without flips.
    const bool wgrad = vgg::cpu::WinogradGeometry{In, Out, H, W}.weight_grad_fits(2);
    CAPTURE(wgrad);
    const float wg_tol = wgrad ? weight_grad_tolerance(long(n) * (H / 2) * (W / 2), max_abs(x), max_abs(dy)) : 0.0f;
    if (flips == 0)
      CHECK(ref::max_abs_diff(direct.wg, wino_train.wg.data()) <= wg_tol);
    else
      CHECK(ref::max_abs_diff(direct.wg, wino_train.wg.data()) <=
            wg_tol + flip_bound * (1.0f + 1e-3f) + 1e-4f * max_abs(direct.wg));
    if (wgrad) CHECK(ref::max_abs_diff(direct.wg, wino_train.wg.data()) > 0.0f);  // Winograd's sums
    // dx: within Winograd's bound, except next to a flipped mask, where a flipped dz of |dy| reaches
    // the inputs of its 3x3 window through one tap each (so by at most |dy| times the largest |w| of
    // its output channel; the weights are [Out][In][3][3]).
    const float dx_tol = winograd_tolerance(Out, max_abs(w), max_abs(direct.dz));
    std::vector<float> w_max_per_out(Out, 0.0f);
    for (std::size_t k = 0; k < w.size(); ++k)
      w_max_per_out[k / (In * 9)] = std::max(w_max_per_out[k / (In * 9)], std::abs(w[k]));
    auto check_dx = [&](const Pass& p) {
      std::vector<char> near_flip(std::size_t(n) * H * W, 0);  // per (image, row, column)
      float flip_bound_dx = 0.0f;
      for (std::size_t i = 0; i < out_size; ++i) {
        if ((direct.y[i] > 0.0f) == (p.y[i] > 0.0f)) continue;
        flip_bound_dx += std::abs(dy[i]) * w_max_per_out[i / (H * W) % Out];
        const int img = int(i / (std::size_t(Out) * H * W)), r = int(i / W % H), c = int(i % W);
        for (int rr = std::max(r - 1, 0); rr <= std::min(r + 1, H - 1); ++rr)
          for (int cc = std::max(c - 1, 0); cc <= std::min(c + 1, W - 1); ++cc)
            near_flip[(std::size_t(img) * H + rr) * W + cc] = 1;
      }
      float worst_far = 0.0f, worst_near = 0.0f;
      for (std::size_t j = 0; j < x.size(); ++j) {
        const std::size_t pos = (j / (std::size_t(In) * H * W) * H + j / W % H) * W + j % W;
        float& worst = near_flip[pos] ? worst_near : worst_far;
        worst = std::max(worst, std::abs(direct.dx[j] - p.dx[j]));
      }
      CAPTURE(flip_bound_dx);
      CHECK(worst_far <= dx_tol);
      CHECK(worst_near <= dx_tol + flip_bound_dx);
    };
    check_dx(wino_train);
    check_dx(wino_eval);
    CHECK(ref::max_abs_diff(direct.dx, wino_train.dx.data()) > 0.0f);  // Winograd did compute it
  }
}

namespace {
/// A pooled layer's training and eval passes by Winograd against its direct path (Winograd off). The
/// training forward writes the winner masks, the backward rebuilds the whole dz from them, takes the
/// weight and bias gradients the direct way and dx by Winograd; an eval forward keeps no masks, and
/// a backward after it rebuilds them by the direct fused forward.
template <int H, int W, int n>
void check_pooled_layer(unsigned seed) {
  using B = vgg::cpu::Backend;
  constexpr int In = 256, Out = 256;
  static_assert(n * ((H + 1) / 2) * ((W + 1) / 2) >= B::kWinogradAmortisingTiles);  // Winograd in training too
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(2);
  vgg::Rng rng(seed);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n, /*pooled=*/true);
  layer.reserve_backward(exec, n, /*pooled=*/true);
  const vgg::RunContext eval{vgg::Mode::eval, 1, 0, 0}, train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, seed + 1);
  const std::size_t pooled_size = std::size_t(n) * Out * (H / 2) * (W / 2);
  const auto dy = ref::random_vector(pooled_size, seed + 2);
  const std::vector<float> w(layer.weight().begin(), layer.weight().end());
  const float tol = winograd_tolerance(In, max_abs(w), max_abs(x));
  struct Pass {
    std::vector<float> pooled, dx, wg, bg;
  };
  auto pass = [&](bool winograd, const vgg::RunContext& run) {
    exec.set_winograd(winograd);
    Pass p{std::vector<float>(pooled_size), std::vector<float>(x.size()), {}, {}};
    layer.forward_pooled(exec, x.data(), p.pooled.data(), n, run);
    layer.backward_pooled(exec, x.data(), dy.data(), p.dx.data(), n, run);
    p.wg.assign(layer.weight_grad().begin(), layer.weight_grad().end());
    p.bg.assign(layer.bias_grad().begin(), layer.bias_grad().end());
    return p;
  };
  const Pass direct = pass(false, train), wino_train = pass(true, train), wino_eval = pass(true, eval);
  CHECK(ref::max_abs_diff(direct.pooled, wino_train.pooled.data()) <= tol);
  CHECK(ref::max_abs_diff(direct.pooled, wino_train.pooled.data()) > 0.0f);  // it did run by Winograd
  CHECK(ref::max_abs_diff(direct.pooled, wino_eval.pooled.data()) <= tol);
  // The winners agree (no window decided within rounding here), so dz is equal, and so are the weight
  // and bias gradients taken from it by the direct path; by Winograd (where its sums fit the cache:
  // weight_grad_fits), within the weight gradient's bound. dx is Winograd's, within its bound.
  const bool wgrad = vgg::cpu::WinogradGeometry{In, Out, H, W}.weight_grad_fits(2);
  CAPTURE(wgrad);
  const long terms = long(n) * ((H + 1) / 2) * ((W + 1) / 2);
  const float wg_tol = wgrad ? weight_grad_tolerance(terms, max_abs(x), max_abs(dy)) : 0.0f;
  const float bg_tol = wgrad ? float(4 * terms) * FLT_EPSILON * max_abs(dy) : 0.0f;
  CHECK(ref::max_abs_diff(direct.wg, wino_train.wg.data()) <= wg_tol);
  CHECK(ref::max_abs_diff(direct.bg, wino_train.bg.data()) <= bg_tol);
  CHECK(ref::max_abs_diff(direct.wg, wino_eval.wg.data()) <= wg_tol);
  if (wgrad) CHECK(ref::max_abs_diff(direct.wg, wino_train.wg.data()) > 0.0f);  // Winograd's sums
  const float dx_tol = winograd_tolerance(Out, max_abs(w), max_abs(dy));
  CHECK(ref::max_abs_diff(direct.dx, wino_train.dx.data()) <= dx_tol);
  CHECK(ref::max_abs_diff(direct.dx, wino_train.dx.data()) > 0.0f);  // Winograd computed it
  // The masks Winograd wrote and those the direct path rebuilt after the eval forward give one dz.
  CHECK(ref::max_abs_diff(wino_train.dx, wino_eval.dx.data()) == 0.0f);
}
}  // namespace

TEST_CASE("Conv3x3Relu's pooled forward and backward by Winograd match the direct path, in training and eval" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  check_pooled_layer<32, 32, 2>(8);  // one image per backward work item: dz written in place
  // 13 x 13 (odd edges dropped by the pool), 12 images on 2 threads: two images per backward work
  // item (dz built side by side, then copied out whole).
  check_pooled_layer<13, 13, 12>(18);
}

TEST_CASE("a small batch runs by Winograd only when the weights repeat in eval, never in training" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  using B = vgg::cpu::Backend;
  constexpr int In = 256, Out = 256, H = 6, W = 10, n = 2;  // 30 tiles: too few to pay for a transform
  static_assert(n * (H / 2) * (W / 2) < B::kWinogradAmortisingTiles);
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(2);
  vgg::Rng rng(9);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n);
  layer.reserve_backward(exec, n);
  const vgg::RunContext eval{vgg::Mode::eval, 1, 0, 0}, train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, 24);
  const std::size_t out_size = std::size_t(n) * Out * H * W;
  std::vector<float> direct(out_size), y(out_size);
  exec.set_winograd(false);
  layer.forward(exec, x.data(), direct.data(), n, eval);
  exec.set_winograd(true);
  auto forward = [&](const vgg::RunContext& run) {
    layer.forward(exec, x.data(), y.data(), n, run);
    return ref::max_abs_diff(direct, y.data());
  };
  CHECK(forward(eval) == 0.0f);  // new weights, small batch: direct
  CHECK(forward(eval) > 0.0f);   // the same weights again: transformed once, Winograd from now on
  // Training decides by the batch alone, cached transform or not: a training step's arithmetic must
  // not depend on whether the same weights were evaluated just before (a resumed run would differ).
  CHECK(forward(train) == 0.0f);
  CHECK(forward(eval) > 0.0f);  // and the cache survived it
  // Training steps change the weights each time: every forward stays direct.
  for (int step = 0; step < 2; ++step) {
    layer.weight()[std::size_t(step)] += 0.25f;
    exec.set_winograd(false);
    layer.forward(exec, x.data(), direct.data(), n, train);
    exec.set_winograd(true);
    CHECK(forward(train) == 0.0f);
  }
}

// The network: eval logits with the Winograd layers against the same network with Winograd turned
// off (Context::set_winograd), after weight updates (an optimizer step) and a checkpoint load, which
// the cached filter transform must follow; and the gradients of a backward after an eval forward.
//
// Tolerance: 2^-16 (1.5e-5) of the largest logit (taken as at least 1). Each Winograd layer's error is
// within the kernel bound above and the classifier adds rounding of its own; the differences seen are
// ~1e-7, a few float ulps of these logits. A stale filter (the weights of before the update or the
// load) would move them by 0.2-0.5: the test checks that the update and the load move the direct
// path's logits by over 100x the tolerance, so it cannot pass with one.

namespace {

// Three convs: the first has no input gradient (first layer), the second runs forward and input
// gradient by Winograd in training too, the third is pooled (in training its forward writes the
// pool's winner masks, and its input gradient is Winograd's too).
// 32 x 32 images (256 tiles each): batches of 2 and 3 pay for new transforms, so training runs by
// Winograd as well.
using WideNet = vgg::Vgg<vgg::Input<256, 32, 32>, vgg::VggBlock<3, 256, 256>, vgg::Classifier<16, 5>>;

std::vector<float> eval_logits(WideNet& net, const std::vector<float>& x, int n, bool winograd) {
  net.context().set_winograd(winograd);
  net.set_mode(vgg::Mode::eval);
  const auto logits = net.forward(x, n);
  return {logits.data(), logits.data() + logits.size()};
}

float logits_tolerance(const std::vector<float>& logits) { return std::ldexp(std::max(1.0f, max_abs(logits)), -16); }

}  // namespace

TEST_CASE("a network's eval forward by Winograd matches the direct path after optimizer steps and a checkpoint load" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  constexpr int n = 3;
  auto net = std::make_unique<WideNet>(11);
  net->set_threads(2);
  const auto x = ref::random_vector(std::size_t(n) * 256 * 32 * 32, 31);
  const std::vector<std::int32_t> labels{0, 3, 4};

  auto direct = eval_logits(*net, x, n, false);
  auto wino = eval_logits(*net, x, n, true);
  MESSAGE("initial: max |winograd - direct| = " << ref::max_abs_diff(direct, wino.data()) << ", max |logit| = "
                                                << max_abs(direct));
  CHECK(ref::max_abs_diff(direct, wino.data()) <= logits_tolerance(direct));
  CHECK(ref::max_abs_diff(direct, wino.data()) > 0.0f);  // Winograd did run

  // Optimizer steps (train mode: the direct path) change the conv weights under the cached transform.
  vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f});
  for (int step = 0; step < 3; ++step) (void)vgg::train_step(*net, sgd, x, labels);
  const auto before = direct;
  direct = eval_logits(*net, x, n, false);
  wino = eval_logits(*net, x, n, true);
  MESSAGE("after steps: max |winograd - direct| = " << ref::max_abs_diff(direct, wino.data())
                                                    << ", moved by " << ref::max_abs_diff(before, direct.data()));
  CHECK(ref::max_abs_diff(direct, wino.data()) <= logits_tolerance(direct));
  CHECK(ref::max_abs_diff(before, direct.data()) > 100 * logits_tolerance(direct));

  // A checkpoint of another network loaded into this one (whose transform is cached).
  const auto path = std::filesystem::temp_directory_path() /
                    ("vgg_test_winograd_" + std::to_string(::getpid()) + ".safetensors");
  {
    auto other = std::make_unique<WideNet>(12);
    vgg::io::save_weights(path, *other);
  }
  vgg::io::load_weights(path, *net);
  std::filesystem::remove(path);
  const auto trained = direct;
  direct = eval_logits(*net, x, n, false);
  wino = eval_logits(*net, x, n, true);
  MESSAGE("after load: max |winograd - direct| = " << ref::max_abs_diff(direct, wino.data())
                                                   << ", moved by " << ref::max_abs_diff(trained, direct.data()));
  CHECK(ref::max_abs_diff(direct, wino.data()) <= logits_tolerance(direct));
  CHECK(ref::max_abs_diff(trained, direct.data()) > 100 * logits_tolerance(direct));
}

namespace {
// The same three convs at the narrowest width the rule takes (16 -> 32 -> 32 -> 32: the width/8
// recipe net's block 3 and 4 widths).
using NarrowNet = vgg::Vgg<vgg::Input<16, 32, 32>, vgg::VggBlock<3, 16, 32>, vgg::Classifier<16, 5>>;
}  // namespace

TEST_CASE("the Winograd rule takes the recipe net's layers from 16 channels in and out on") {
  using B = vgg::cpu::Backend;
  using vgg::ConvShape;
  // Width/8 VGG-11 at 224: block 1 (1 -> 8) and block 2 (8 -> 16) stay direct; blocks 3-5 by Winograd.
  CHECK_FALSE(B::winograd_rule(ConvShape{1, 8, 224, 224}));
  CHECK_FALSE(B::winograd_rule(ConvShape{8, 16, 112, 112}));
  CHECK_FALSE(B::winograd_rule(ConvShape{64, 8, 28, 28}));  // both counts must reach 16
  for (const ConvShape s : {ConvShape{16, 32, 56, 56}, ConvShape{32, 32, 56, 56}, ConvShape{32, 64, 28, 28},
                            ConvShape{64, 64, 28, 28}, ConvShape{64, 64, 14, 14}, ConvShape{512, 512, 14, 14}}) {
    CAPTURE(s.cin);
    CAPTURE(s.cout);
    CHECK(B::winograd_rule(s) == vgg::cpu::kFastKernels);
  }
}

TEST_CASE_TEMPLATE("a network's gradients with Winograd layers match the direct path's, in eval and train mode" *
                       doctest::skip(!vgg::cpu::kFastKernels),
                   Net, WideNet, NarrowNet) {
  constexpr int n = 2;
  auto net = std::make_unique<Net>(13);
  net->set_threads(2);
  const auto x = ref::random_vector(std::size_t(n) * Net::input_shape.size(), 32);
  const std::vector<std::int32_t> labels{1, 2};
  auto gradients = [&](bool winograd, vgg::Mode mode) {
    net->context().set_winograd(winograd);
    net->set_mode(mode);
    net->set_step(0);  // the same dropout masks in train mode
    (void)net->forward(x, n);
    (void)net->loss(labels, /*gradient=*/true);
    net->backward(/*input_gradient=*/true);
    std::vector<float> g;
    net->for_each_parameter_data(
        [&](std::span<float>, std::span<float> grad) { g.insert(g.end(), grad.begin(), grad.end()); });
    const auto dx = net->input_gradient();
    g.insert(g.end(), dx.begin(), dx.end());
    return g;
  };
  for (const vgg::Mode mode : {vgg::Mode::eval, vgg::Mode::train}) {
    CAPTURE(int(mode));
    const auto direct = gradients(false, mode);
    const auto wino = gradients(true, mode);
    // The ReLU masks and the pooled conv's winners come from Winograd outputs (in eval, the winners
    // are rebuilt by the direct path), the input gradients are Winograd's: the gradients differ by
    // rounding, carried through (a flipped ReLU or winner would show).
    MESSAGE("max |grad winograd - grad direct| = " << ref::max_abs_diff(direct, wino.data())
                                                   << ", max |grad| = " << max_abs(direct));
    CHECK(ref::max_abs_diff(direct, wino.data()) <= std::ldexp(std::max(1.0f, max_abs(direct)), -16));
    CHECK(ref::max_abs_diff(direct, wino.data()) > 0.0f);  // Winograd did run
  }
}

TEST_CASE("a network trained by Winograd keeps its weights within rounding of the direct path's" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  constexpr int n = 2;
  auto wino = std::make_unique<WideNet>(15), direct = std::make_unique<WideNet>(15);
  wino->set_threads(2);
  direct->set_threads(2);
  direct->context().set_winograd(false);
  const auto x = ref::random_vector(std::size_t(n) * 256 * 32 * 32, 34);
  const std::vector<std::int32_t> labels{3, 1};
  auto parameters = [](WideNet& net) {
    std::vector<float> p;
    net.for_each_parameter_data([&](std::span<float> v, std::span<float>) { p.insert(p.end(), v.begin(), v.end()); });
    return p;
  };
  const auto initial = parameters(*direct);
  vgg::Sgd sgd_wino({.lr = 0.05f, .momentum = 0.9f}), sgd_direct({.lr = 0.05f, .momentum = 0.9f});
  for (int step = 0; step < 4; ++step) {
    const double loss_wino = vgg::train_step(*wino, sgd_wino, x, labels).loss;
    const double loss_direct = vgg::train_step(*direct, sgd_direct, x, labels).loss;
    CAPTURE(step);
    CHECK(std::abs(loss_wino - loss_direct) <= std::ldexp(std::max(1.0, std::abs(loss_direct)), -16));
  }
  const auto p_wino = parameters(*wino), p_direct = parameters(*direct);
  const float tol = std::ldexp(std::max(1.0f, max_abs(p_direct)), -16);
  MESSAGE("after 4 steps: max |w winograd - w direct| = " << ref::max_abs_diff(p_direct, p_wino.data())
                                                          << ", moved by " << ref::max_abs_diff(initial, p_direct.data()));
  CHECK(ref::max_abs_diff(p_direct, p_wino.data()) <= tol);
  CHECK(ref::max_abs_diff(p_direct, p_wino.data()) > 0.0f);  // Winograd did run
  CHECK(ref::max_abs_diff(initial, p_direct.data()) > 100 * tol);  // the steps moved the weights
}

namespace {
// The same three convs with batch norm: eval folds the norm into the conv, and the folded conv runs
// by Winograd where the plain one would.
using WideBnNet = vgg::Vgg<vgg::Input<256, 32, 32>, vgg::VggBlock<3, 256, 256, vgg::BatchNorm>, vgg::Classifier<16, 5>>;
}  // namespace

TEST_CASE("a batch-norm network's eval forward and eval gradients by Winograd match the direct path" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  constexpr int n = 2;
  auto net = std::make_unique<WideBnNet>(14);
  net->set_threads(2);
  const auto x = ref::random_vector(std::size_t(n) * 256 * 32 * 32, 33);
  const std::vector<std::int32_t> labels{1, 4};
  auto eval = [&](bool winograd) {
    net->context().set_winograd(winograd);
    net->set_mode(vgg::Mode::eval);
    const auto logits = net->forward(x, n);
    return std::vector<float>(logits.data(), logits.data() + logits.size());
  };
  auto gradients = [&](bool winograd) {
    net->context().set_winograd(winograd);
    net->set_mode(vgg::Mode::eval);
    (void)net->forward(x, n);
    (void)net->loss(labels, /*gradient=*/true);
    net->backward(/*input_gradient=*/true);
    std::vector<float> g;
    net->for_each_parameter_data(
        [&](std::span<float>, std::span<float> grad) { g.insert(g.end(), grad.begin(), grad.end()); });
    const auto dx = net->input_gradient();
    g.insert(g.end(), dx.begin(), dx.end());
    return g;
  };
  // Training steps move the weights and the running statistics, both of which the fold reads.
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    const auto direct = eval(false);
    const auto wino = eval(true);
    MESSAGE("bn eval: max |winograd - direct| = " << ref::max_abs_diff(direct, wino.data()) << ", max |logit| = "
                                                  << max_abs(direct));
    CHECK(ref::max_abs_diff(direct, wino.data()) <= logits_tolerance(direct));
    CHECK(ref::max_abs_diff(direct, wino.data()) > 0.0f);  // Winograd did run
    // A backward after a pooled eval forward by Winograd rebuilds the pool state by the direct path.
    const auto g_direct = gradients(false);
    const auto g_wino = gradients(true);
    CHECK(ref::max_abs_diff(g_direct, g_wino.data()) <= std::ldexp(std::max(1.0f, max_abs(g_direct)), -16));
    vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f});
    for (int step = 0; step < 2; ++step) (void)vgg::train_step(*net, sgd, x, labels);
    const auto moved = eval(false);
    CHECK(ref::max_abs_diff(direct, moved.data()) > 100 * logits_tolerance(direct));
  }
}

// bf16 mode's Winograd (the 16 GEMMs on bf16 operands, fp32 sums; transforms in fp32) against the
// naive convolution in double. Bound, per output: each GEMM product U V is of operands rounded to
// bf16's 8-bit significand (relative error 2^-8 each), so is off by (2^-7 + 2^-16) |U| |V|, and the
// fp32 sums add (c + 2) eps of the same; the output transform adds those errors of the 16 points
// with coefficients |A^T| (0 or 1). Hence (2^-7 + 2^-16 + (c + 2) eps) sum_p |A^T|_p sum_ci |U| |V|
// (the magnitudes, from a double Winograd on absolute values), plus the fp32 Winograd bound above
// for the transforms' own rounding. Skipped where the CPU lacks avx512_bf16.
namespace {

#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
/// Per output y(i, co, r, c): sum over the 16 points (ti, tj) of |A^T[r][ti]| |A^T[c][tj]| times
/// sum over ci of |U[ti tj][co][ci]| |V[ti tj][ci]| for the tile holding (r, c); in double.
std::vector<double> winograd_magnitudes(const std::vector<float>& x, const std::vector<float>& w, int n, int cin,
                                        int cout, int h, int wd) {
  std::vector<double> u(std::size_t(16) * cout * cin);  // |U[p][co][ci]|
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci) {
      const float* g = &w[(std::size_t(co) * cin + ci) * 9];
      double t[4][3];
      for (int c = 0; c < 3; ++c) {
        const double g0 = g[c], g1 = g[3 + c], g2 = g[6 + c];
        t[0][c] = g0, t[1][c] = 0.5 * (g0 + g1 + g2), t[2][c] = 0.5 * (g0 - g1 + g2), t[3][c] = g2;
      }
      for (int r = 0; r < 4; ++r) {
        const double a = t[r][0], b = t[r][1], c = t[r][2], row[4] = {a, 0.5 * (a + b + c), 0.5 * (a - b + c), c};
        for (int j = 0; j < 4; ++j) u[(std::size_t(r * 4 + j) * cout + co) * cin + ci] = std::abs(row[j]);
      }
    }
  const double at[2][4] = {{1, 1, 1, 0}, {0, 1, 1, 1}};  // |A^T|
  std::vector<double> out(std::size_t(n) * cout * h * wd), v(std::size_t(16) * cin);
  for (int i = 0; i < n; ++i)
    for (int ty = 0; ty < (h + 1) / 2; ++ty)
      for (int tx = 0; tx < (wd + 1) / 2; ++tx) {
        for (int ci = 0; ci < cin; ++ci) {  // |V[p][ci]| = |B^T d B|
          double d[4][4], t[4][4];
          for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) {
              const int yy = 2 * ty - 1 + r, xx = 2 * tx - 1 + c;
              d[r][c] = yy >= 0 && yy < h && xx >= 0 && xx < wd ? x[((std::size_t(i) * cin + ci) * h + yy) * wd + xx] : 0;
            }
          for (int c = 0; c < 4; ++c)
            t[0][c] = d[0][c] - d[2][c], t[1][c] = d[1][c] + d[2][c], t[2][c] = d[2][c] - d[1][c],
            t[3][c] = d[1][c] - d[3][c];
          for (int r = 0; r < 4; ++r) {
            const double row[4] = {t[r][0] - t[r][2], t[r][1] + t[r][2], t[r][2] - t[r][1], t[r][1] - t[r][3]};
            for (int j = 0; j < 4; ++j) v[std::size_t(r * 4 + j) * cin + ci] = std::abs(row[j]);
          }
        }
        for (int co = 0; co < cout; ++co) {
          double s[16];
          for (int p = 0; p < 16; ++p) {
            s[p] = 0;
            for (int ci = 0; ci < cin; ++ci)
              s[p] += u[(std::size_t(p) * cout + co) * cin + ci] * v[std::size_t(p) * cin + ci];
          }
          for (int r = 0; r < 2; ++r)
            for (int c = 0; c < 2; ++c) {
              const int yy = 2 * ty + r, xx = 2 * tx + c;
              if (yy >= h || xx >= wd) continue;
              double m = 0;
              for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) m += at[r][a] * at[c][b] * s[a * 4 + b];
              out[((std::size_t(i) * cout + co) * h + yy) * wd + xx] = m;
            }
        }
      }
  return out;
}

/// The bound above, per output, for a convolution over `channels` input channels.
std::vector<float> bf16_winograd_tolerances(const std::vector<double>& magnitudes, int channels, float fp32_bound) {
  const double rate = 0x1p-7 + 0x1p-16 + double(channels + 2) * FLT_EPSILON;
  std::vector<float> tol(magnitudes.size());
  for (std::size_t i = 0; i < tol.size(); ++i) tol[i] = float(rate * magnitudes[i]) + fp32_bound;
  return tol;
}

/// max |got - want| / tol over the outputs: <= 1 where every output is within its bound.
float worst_ratio(const std::vector<float>& want, const std::vector<float>& got, const std::vector<float>& tol) {
  float worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / tol[i]);
  return worst;
}

/// The weights of the input gradient's convolution (cout -> cin): rotated 180 degrees, channels swapped.
std::vector<float> rotated_swapped(const std::vector<float>& w, int cin, int cout) {
  std::vector<float> r(w.size());
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci)
      for (int k = 0; k < 9; ++k) r[(std::size_t(ci) * cout + co) * 9 + (8 - k)] = w[(std::size_t(co) * cin + ci) * 9 + k];
  return r;
}

/// Returns the forward's worst ratio (for the caller's non-vacuity checks).
float check_bf16_against_naive(int n, int cin, int cout, int h, int wd, int threads, bool relu, long chunk = 0,
                               float x_lo = -1.0f, float w_lo = -0.1f) {
  CAPTURE(n);
  CAPTURE(cin);
  CAPTURE(cout);
  CAPTURE(h);
  CAPTURE(wd);
  CAPTURE(threads);
  CAPTURE(chunk);
  const unsigned seed = unsigned(n * 1000 + cin * 100 + cout * 10 + h + wd + 5);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, seed, x_lo, 1.0f);
  const auto w = ref::random_vector(std::size_t(cout) * cin * 9, seed + 1, w_lo, 0.1f);
  const auto b = ref::random_vector(std::size_t(cout), seed + 2);
  const auto want = naive_conv(x, w, b, n, cin, cout, h, wd, relu);
  const auto tol = bf16_winograd_tolerances(winograd_magnitudes(x, w, n, cin, cout, h, wd), cin,
                                            winograd_tolerance(cin, max_abs(w), max_abs(x)));
  const auto got = winograd_forward<KernelPath::avx512>(x, w, b, n, cin, cout, h, wd, threads, relu, chunk, false, true);
  const float worst = worst_ratio(want, got, tol);
  CHECK(worst <= 1.0f);
  // The fused pool: a window's max moves by at most its outputs' largest error.
  const auto got_pooled =
      winograd_forward<KernelPath::avx512>(x, w, b, n, cin, cout, h, wd, threads, relu, chunk, true, true);
  CHECK(worst_ratio(ref::maxpool2x2(want, n * cout, h, wd), got_pooled, ref::maxpool2x2(tol, n * cout, h, wd)) <= 1.0f);

  const auto dz = ref::random_vector(std::size_t(n) * cout * h * wd, seed + 3);
  const auto want_dx = naive_input_grad(dz, w, n, cin, cout, h, wd);
  const auto tol_dx = bf16_winograd_tolerances(winograd_magnitudes(dz, rotated_swapped(w, cin, cout), n, cout, cin, h, wd),
                                               cout, winograd_tolerance(cout, max_abs(w), max_abs(dz)));
  CHECK(worst_ratio(want_dx, winograd_input_grad<KernelPath::avx512>(dz, w, n, cin, cout, h, wd, threads, true),
                    tol_dx) <= 1.0f);
  return worst;
}

std::vector<float> absolute_values(std::vector<float> v) {
  for (float& e : v) e = std::abs(e);
  return v;
}
#endif

bool bf16_winograd_runs() {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  return vgg::cpu::bf16::bf16_gemm_available();
#else
  return false;
#endif
}

/// Whether bf16 mode's layers take Winograd: not where AMX tiles run the direct path's products
/// (cpu::Backend::winograd_in_precision).
bool amx_runs() {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  return vgg::cpu::amx::amx_ready();
#else
  return false;
#endif
}
bool bf16_winograd_in_layers() { return bf16_winograd_runs() && !amx_runs(); }

}  // namespace

TEST_CASE("Winograd with bf16 GEMMs matches a naive convolution within bf16's precision, forward and input gradient" *
          doctest::skip(!bf16_winograd_runs())) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  // Odd channel counts (a depth pair's odd tail), cout not a multiple of 8 (padded tile rows), two
  // depth passes (300 = 256 + 44), chunks cut mid row, tile rows over one 16-tile vector, runs
  // across GEMM panels.
  check_bf16_against_naive(3, 3, 5, 7, 9, 2, true);
  check_bf16_against_naive(2, 37, 19, 9, 30, 3, false, 32);
  check_bf16_against_naive(2, 5, 7, 5, 67, 2, true);
  // Tile rows of 20: a row's second run of 16 tiles crosses a 32-column GEMM panel.
  check_bf16_against_naive(2, 6, 9, 6, 40, 2, true);
  check_bf16_against_naive(1, 300, 13, 4, 5, 2, false);
  check_bf16_against_naive(1, 13, 300, 3, 5, 1, true);
  check_bf16_against_naive(2, 64, 64, 28, 28, 2, false);
  // Non-negative data: the magnitudes are close to |y| (few cancellations), so the bound is tight
  // enough that a filter 5% off fails it.
  const int n = 2, cin = 64, cout = 64, h = 14, wd = 14, threads = 2;
  CHECK(check_bf16_against_naive(n, cin, cout, h, wd, threads, false, 0, 0.0f, 0.0f) <= 1.0f);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, 41, 0.0f, 1.0f);
  const auto w = ref::random_vector(std::size_t(cout) * cin * 9, 42, 0.0f, 0.1f);
  const std::vector<float> b(std::size_t(cout), 0.0f);
  const auto want = naive_conv(x, w, b, n, cin, cout, h, wd, false);
  const auto tol = bf16_winograd_tolerances(winograd_magnitudes(x, w, n, cin, cout, h, wd), cin,
                                            winograd_tolerance(cin, max_abs(w), max_abs(x)));
  const auto fp32 = winograd_forward<KernelPath::avx512>(x, w, b, n, cin, cout, h, wd, threads, false);
  const auto low = winograd_forward<KernelPath::avx512>(x, w, b, n, cin, cout, h, wd, threads, false, 0, false, true);
  CHECK(worst_ratio(want, low, tol) <= 1.0f);
  CHECK(ref::max_abs_diff(fp32, low.data()) > winograd_tolerance(cin, max_abs(w), max_abs(x)));  // bf16 did run
  auto w_off = w;
  for (float& e : w_off) e *= 1.05f;
  const auto off = winograd_forward<KernelPath::avx512>(x, w_off, b, n, cin, cout, h, wd, threads, false, 0, false, true);
  CHECK(worst_ratio(want, off, tol) > 1.0f);
#endif
}

// The layer in bf16 mode: where the rule picks it, its forward and input gradient run Winograd on
// bf16 GEMMs (the kernel's results, bit for bit), within the two paths' bounds of its direct bf16
// path; Context::set_winograd(false) turns it off.
TEST_CASE("Conv3x3Relu in bf16 mode runs Winograd with bf16 GEMMs, within bound of its direct bf16 path" *
          doctest::skip(!bf16_winograd_in_layers())) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  using B = vgg::cpu::Backend;
  constexpr int In = 256, Out = 256, H = 32, W = 32, n = 2, threads = 2;
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(threads);
  exec.set_precision(vgg::Precision::bf16);
  REQUIRE(exec.precision_in_use() == vgg::Precision::bf16);
  vgg::Rng rng(9);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n);
  layer.reserve_backward(exec, n);
  const vgg::RunContext train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, 31);
  const auto dy = ref::random_vector(std::size_t(n) * Out * H * W, 32);
  struct Pass {
    std::vector<float> y, dz, dx;
  };
  auto pass = [&](bool winograd) {
    exec.set_winograd(winograd);
    Pass p{std::vector<float>(dy.size()), dy, std::vector<float>(x.size())};
    layer.forward(exec, x.data(), p.y.data(), n, train);
    layer.backward(exec, x.data(), p.y.data(), p.dz.data(), p.dx.data(), n, train);
    return p;
  };
  const Pass direct = pass(false), wino = pass(true);
  const std::vector<float> w(layer.weight().begin(), layer.weight().end()), b(layer.bias().begin(), layer.bias().end());
  const auto kernel_y =
      winograd_forward<KernelPath::avx512>(x, w, b, n, In, Out, H, W, threads, true, 0, false, /*bf16=*/true);
  CHECK(ref::max_abs_diff(kernel_y, wino.y.data()) == 0.0f);
  const auto kernel_dx = winograd_input_grad<KernelPath::avx512>(wino.dz, w, n, In, Out, H, W, threads, true);
  CHECK(ref::max_abs_diff(kernel_dx, wino.dx.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.y, wino.y.data()) > 0.0f);  // set_winograd(false) did turn it off
  // |Winograd - direct| <= Winograd's bound (above) + the direct path's: its products of bf16
  // operands over 9 In terms, (2^-7 + 2^-16 + (9 In + 2) eps) sum |w| |x| (as test_bf16 bounds it).
  auto tol = bf16_winograd_tolerances(winograd_magnitudes(x, w, n, In, Out, H, W), In,
                                      winograd_tolerance(In, max_abs(w), max_abs(x)));
  const auto direct_magnitude = naive_conv(absolute_values(x), absolute_values(w), {}, n, In, Out, H, W, false);
  for (std::size_t i = 0; i < tol.size(); ++i)
    tol[i] += float((0x1p-7 + 0x1p-16 + (9.0 * In + 2) * FLT_EPSILON) * direct_magnitude[i]);
  CHECK(worst_ratio(direct.y, wino.y, tol) <= 1.0f);

  // Switching precision on the same weights: fp32 takes the fp32 transform, bf16 again the same bf16
  // copy (both cached; neither is confused with the other).
  exec.set_precision(vgg::Precision::fp32);
  const Pass fp32 = pass(true);
  CHECK(ref::max_abs_diff(winograd_forward<KernelPath::avx512>(x, w, b, n, In, Out, H, W, threads, true), fp32.y.data()) ==
        0.0f);
  exec.set_precision(vgg::Precision::bf16);
  CHECK(ref::max_abs_diff(wino.y, pass(true).y.data()) == 0.0f);
#endif
}

// A pooled layer's training step in bf16 mode: the forward by Winograd on bf16 GEMMs (the kernel's
// pooled output, bit for bit) writes winner masks, and the backward takes dx by Winograd on bf16 GEMMs
// from the whole dz those winners route: equal, bit for bit, to the kernels run by hand on the dz
// built from the kernel's unpooled output (first maximum of each window, none where it is not
// positive). The weight gradient (direct bf16 path from that dz) is checked against the exact one from
// that dz: the direct bf16 layer's winners may differ where a window is decided within bf16 rounding.
TEST_CASE("Conv3x3Relu's pooled training step in bf16 mode runs Winograd on bf16 GEMMs" *
          doctest::skip(!bf16_winograd_in_layers())) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  using B = vgg::cpu::Backend;
  constexpr int In = 256, Out = 256, H = 32, W = 32, n = 2, threads = 2;
  static_assert(n * (H / 2) * (W / 2) >= B::kWinogradAmortisingTiles);  // Winograd in training
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(threads);
  exec.set_precision(vgg::Precision::bf16);
  REQUIRE(exec.precision_in_use() == vgg::Precision::bf16);
  vgg::Rng rng(19);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n, /*pooled=*/true);
  layer.reserve_backward(exec, n, /*pooled=*/true);
  const vgg::RunContext train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, 41);
  const std::size_t pooled_size = std::size_t(n) * Out * (H / 2) * (W / 2);
  const auto dy = ref::random_vector(pooled_size, 42);
  struct Pass {
    std::vector<float> pooled, dx, wg;
  };
  auto pass = [&](bool winograd) {
    exec.set_winograd(winograd);
    Pass p{std::vector<float>(pooled_size), std::vector<float>(x.size()), {}};
    layer.forward_pooled(exec, x.data(), p.pooled.data(), n, train);
    layer.backward_pooled(exec, x.data(), dy.data(), p.dx.data(), n, train);
    p.wg.assign(layer.weight_grad().begin(), layer.weight_grad().end());
    return p;
  };
  const Pass wino = pass(true), direct = pass(false);
  const std::vector<float> w(layer.weight().begin(), layer.weight().end()), b(layer.bias().begin(), layer.bias().end());

  const auto kernel_pooled = winograd_forward<KernelPath::avx512>(x, w, b, n, In, Out, H, W, threads, true, 0,
                                                                   /*pool=*/true, /*bf16=*/true);
  CHECK(ref::max_abs_diff(kernel_pooled, wino.pooled.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.pooled, wino.pooled.data()) > 0.0f);  // set_winograd(false) did turn it off

  const auto y = winograd_forward<KernelPath::avx512>(x, w, b, n, In, Out, H, W, threads, true, 0, false, true);
  std::vector<float> dz(y.size(), 0.0f);
  for (int i = 0; i < n * Out; ++i)
    for (int r = 0; r < H / 2; ++r)
      for (int c = 0; c < W / 2; ++c) {
        const std::size_t at[4] = {(std::size_t(i) * H + 2 * r) * W + 2 * c, (std::size_t(i) * H + 2 * r) * W + 2 * c + 1,
                                   (std::size_t(i) * H + 2 * r + 1) * W + 2 * c,
                                   (std::size_t(i) * H + 2 * r + 1) * W + 2 * c + 1};
        int best = 0;
        for (int e = 1; e < 4; ++e)
          if (y[at[e]] > y[at[best]]) best = e;
        if (y[at[best]] > 0) dz[at[best]] = dy[(std::size_t(i) * (H / 2) + r) * (W / 2) + c];
      }
  const auto kernel_dx = winograd_input_grad<KernelPath::avx512>(dz, w, n, In, Out, H, W, threads, /*bf16=*/true);
  CHECK(ref::max_abs_diff(kernel_dx, wino.dx.data()) == 0.0f);
  // The weight gradient (the direct bf16 path's, from that dz) against the exact one in double, for a
  // few output channels, within bf16's bound on products of rounded operands: (2^-7 + 2^-16 + (k + 2)
  // eps) sum |dz| |x| over the k = n H W terms.
  float worst = 0.0f;
  for (const int co : {0, 17, Out - 1})
    for (int ci = 0; ci < In; ++ci)
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx) {
          double exact = 0.0, magnitude = 0.0;
          for (int i = 0; i < n; ++i)
            for (int r = 0; r < H; ++r)
              for (int c = 0; c < W; ++c) {
                const int sy = r + ky - 1, sx = c + kx - 1;
                if (sy < 0 || sy >= H || sx < 0 || sx >= W) continue;
                const double d = dz[((std::size_t(i) * Out + co) * H + r) * W + c];
                const double v = x[((std::size_t(i) * In + ci) * H + sy) * W + sx];
                exact += d * v;
                magnitude += std::abs(d * v);
              }
          const double bound = (0x1p-7 + 0x1p-16 + (double(n) * H * W + 2) * FLT_EPSILON) * magnitude + 1e-30;
          const float got = wino.wg[((std::size_t(co) * In + ci) * 3 + ky) * 3 + kx];
          worst = std::max(worst, float(std::abs(got - exact) / bound));
        }
  MESSAGE("weight gradient: worst error / bound = " << worst);
  CHECK(worst <= 1.0f);
#endif
}

// Where AMX tiles take bf16 products, bf16 mode's layers run the direct path even where the rule picks
// Winograd (its GEMMs would run on vdpbf16ps, its transforms in fp32: slower there, see
// cpu::Backend::winograd_in_precision): with Winograd allowed or not, the same results bit for bit,
// plain and pooled, forward and backward; fp32 mode on the same layer still takes Winograd.
TEST_CASE("Conv3x3Relu in bf16 mode on an AMX machine runs direct, not Winograd" * doctest::skip(!amx_runs())) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  using B = vgg::cpu::Backend;
  constexpr int In = 256, Out = 256, H = 32, W = 32, n = 2, threads = 2;
  static_assert(n * (H / 2) * (W / 2) >= B::kWinogradAmortisingTiles);  // the batch alone would pick it
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(threads);
  vgg::Rng rng(29);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n, /*pooled=*/true);
  layer.reserve_backward(exec, n, /*pooled=*/true);
  const vgg::RunContext train{vgg::Mode::train, 1, 0, 0}, eval{vgg::Mode::eval, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, 51);
  const std::size_t out_size = std::size_t(n) * Out * H * W, pooled_size = out_size / 4;
  const auto dy = ref::random_vector(out_size, 52);
  struct Pass {
    std::vector<float> y, dx, pooled, pooled_dx, eval_y;
  };
  auto pass = [&](bool winograd) {
    exec.set_winograd(winograd);
    Pass p{std::vector<float>(out_size), std::vector<float>(x.size()), std::vector<float>(pooled_size),
           std::vector<float>(x.size()), std::vector<float>(out_size)};
    std::vector<float> dz = dy;
    layer.forward(exec, x.data(), p.y.data(), n, train);
    layer.backward(exec, x.data(), p.y.data(), dz.data(), p.dx.data(), n, train);
    layer.forward_pooled(exec, x.data(), p.pooled.data(), n, train);
    layer.backward_pooled(exec, x.data(), dy.data(), p.pooled_dx.data(), n, train);
    layer.forward(exec, x.data(), p.eval_y.data(), n, eval);
    return p;
  };
  exec.set_precision(vgg::Precision::bf16);
  REQUIRE(exec.precision_in_use() == vgg::Precision::bf16);
  const Pass direct = pass(false), allowed = pass(true);
  CHECK(ref::max_abs_diff(direct.y, allowed.y.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.dx, allowed.dx.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.pooled, allowed.pooled.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.pooled_dx, allowed.pooled_dx.data()) == 0.0f);
  CHECK(ref::max_abs_diff(direct.eval_y, allowed.eval_y.data()) == 0.0f);
  // fp32 on the same layer: Winograd does run (its results differ from the direct path's).
  exec.set_precision(vgg::Precision::fp32);
  const Pass fp32_direct = pass(false), fp32_winograd = pass(true);
  CHECK(ref::max_abs_diff(fp32_direct.y, fp32_winograd.y.data()) > 0.0f);
  CHECK(ref::max_abs_diff(fp32_direct.pooled, fp32_winograd.pooled.data()) > 0.0f);
#endif
}

namespace {
/// Weight and bias gradients of a stride-1 pad-1 convolution for output gradient dz, in double.
void naive_weight_grad(const std::vector<float>& x, const std::vector<float>& dz, int n, int cin, int cout, int h,
                       int wd, std::vector<float>& dw, std::vector<float>& db) {
  dw.assign(std::size_t(cout) * cin * 9, 0.0f);
  db.assign(std::size_t(cout), 0.0f);
  for (int co = 0; co < cout; ++co) {
    double b = 0.0;
    for (int i = 0; i < n; ++i)
      for (int p = 0; p < h * wd; ++p) b += dz[(std::size_t(i) * cout + co) * h * wd + p];
    db[std::size_t(co)] = float(b);
    for (int ci = 0; ci < cin; ++ci)
      for (int ky = 0; ky < 3; ++ky)
        for (int kx = 0; kx < 3; ++kx) {
          double acc = 0.0;  // dw(ky, kx) = sum dz(r, c) x(r + ky - 1, c + kx - 1)
          for (int i = 0; i < n; ++i)
            for (int r = 0; r < h; ++r)
              for (int c = 0; c < wd; ++c) {
                const int sy = r + ky - 1, sx = c + kx - 1;
                if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
                acc += double(dz[((std::size_t(i) * cout + co) * h + r) * wd + c]) *
                       x[((std::size_t(i) * cin + ci) * h + sy) * wd + sx];
              }
          dw[((std::size_t(co) * cin + ci) * 3 + ky) * 3 + kx] = float(acc);
        }
  }
}

template <KernelPath Path>
void check_weight_grad(int n, int cin, int cout, int h, int wd, int threads, bool relu, long chunk) {
  CAPTURE(n);
  CAPTURE(cin);
  CAPTURE(cout);
  CAPTURE(h);
  CAPTURE(wd);
  CAPTURE(threads);
  CAPTURE(relu);
  CAPTURE(chunk);
  const auto x = ref::random_vector(std::size_t(n) * cin * h * wd, unsigned(cin * 7 + h));
  const auto dy = ref::random_vector(std::size_t(n) * cout * h * wd, unsigned(cout * 5 + wd));
  // y: the layer's ReLU output, with zeros (a dead unit), negative zeros and a NaN (which passes).
  auto y = ref::random_vector(dy.size(), 99);
  for (float& e : y) e = std::max(e, 0.0f);
  if (y.size() > 3) {
    y[1] = -0.0f;
    y[2] = std::nanf("");
  }
  std::vector<float> dz = dy;
  if (relu)
    for (std::size_t i = 0; i < dz.size(); ++i)
      if (y[i] <= 0.0f) dz[i] = 0.0f;
  std::vector<float> want_w, want_b;
  naive_weight_grad(x, dz, n, cin, cout, h, wd, want_w, want_b);

  const vgg::cpu::WinogradGeometry g{cin, cout, h, wd, chunk};
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve_weight_grad(g, threads);
  std::vector<float> got_w(want_w.size(), -7.0f), got_b(want_b.size(), -7.0f), dy_io = dy;
  vgg::cpu::winograd_conv3x3_weight_grad<Path>(x.data(), relu ? y.data() : nullptr, dy_io.data(), got_w.data(),
                                              got_b.data(), n, g, ws, threads);
  const long terms = long(n) * g.tiles_per_image();
  CHECK(ref::max_abs_diff(want_w, got_w.data()) <= weight_grad_tolerance(terms, max_abs(x), max_abs(dz)));
  CHECK(ref::max_abs_diff(want_b, got_b.data()) <= float(terms + 4) * 4.0f * FLT_EPSILON * max_abs(dz) + 1e-6f);
  CHECK(ref::max_abs_diff(dz, dy_io.data()) == 0.0f);  // dz = dy * (y > 0) left in dy (dy as it was without y)
}

template <KernelPath Path>
void weight_grad_shapes() {
  for (int threads : {1, 2, 3}) {
    check_weight_grad<Path>(2, 3, 5, 7, 9, threads, true, 32);  // odd edges: tiles over the border
    check_weight_grad<Path>(1, 1, 1, 1, 1, threads, false, 0);  // one pixel
    check_weight_grad<Path>(3, 16, 8, 12, 34, threads, true, 32);  // rows over 16 tiles, chunks cut rows
    check_weight_grad<Path>(2, 8, 16, 11, 6, threads, false, 0);  // cin < cout: the other orientation
    check_weight_grad<Path>(2, 17, 17, 5, 5, threads, true, 64);
  }
}
}  // namespace

TEST_CASE("Winograd's weight and bias gradients match a naive correlation on odd sizes (plain path)") {
  weight_grad_shapes<KernelPath::plain>();
}

TEST_CASE("Winograd's weight and bias gradients match a naive correlation on odd sizes (AVX-512 path)" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
#ifdef VGG_FAST_KERNELS
  weight_grad_shapes<KernelPath::avx512>();
#endif
}

namespace {
/// A narrow layer (its Winograd products' sums fit the cache: weight_grad_fits) takes its weight and
/// bias gradients by Winograd along with dx, pooled or not: against the direct path within the
/// weight gradient's bound (the ReLU masks and winners agree here, so dz is the same), and not equal
/// to it (Winograd did run).
template <int In, int Out, bool Pooled>
void check_narrow_layer_gradients(unsigned seed) {
  using B = vgg::cpu::Backend;
  constexpr int H = 32, W = 32, n = 2;
  static_assert(n * (H / 2) * (W / 2) >= B::kWinogradAmortisingTiles);
  // 8 input channels: only the input gradient by Winograd (winograd_input_grad_rule); the weight
  // gradient stays the direct path's.
  const bool wgrad = B::winograd_rule(vgg::ConvShape{In, Out, H, W});
  REQUIRE(B::winograd_input_grad_rule(vgg::ConvShape{In, Out, H, W}));
  if (wgrad) REQUIRE(vgg::cpu::WinogradGeometry{In, Out, H, W}.weight_grad_fits(2));
  vgg::Conv3x3Relu<In, Out, H, W, B> layer;
  B::Context exec;
  exec.set_threads(2);
  vgg::Rng rng(seed);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n, Pooled);
  layer.reserve_backward(exec, n, Pooled);
  const vgg::RunContext train{vgg::Mode::train, 1, 0, 0};
  const auto x = ref::random_vector(std::size_t(n) * In * H * W, seed + 1);
  const std::size_t out_size = std::size_t(n) * Out * (Pooled ? (H / 2) * (W / 2) : H * W);
  const auto dy = ref::random_vector(out_size, seed + 2);
  struct Pass {
    std::vector<float> y, dx, wg, bg;
  };
  auto pass = [&](bool winograd) {
    exec.set_winograd(winograd);
    Pass p{std::vector<float>(out_size), std::vector<float>(x.size()), {}, {}};
    std::vector<float> dz = dy;
    if constexpr (Pooled) {
      layer.forward_pooled(exec, x.data(), p.y.data(), n, train);
      layer.backward_pooled(exec, x.data(), dy.data(), p.dx.data(), n, train);
    } else {
      layer.forward(exec, x.data(), p.y.data(), n, train);
      layer.backward(exec, x.data(), p.y.data(), dz.data(), p.dx.data(), n, train);
    }
    p.wg.assign(layer.weight_grad().begin(), layer.weight_grad().end());
    p.bg.assign(layer.bias_grad().begin(), layer.bias_grad().end());
    return p;
  };
  const Pass direct = pass(false), wino = pass(true);
  const long terms = long(n) * H * W;
  const float wg_tol = wgrad ? weight_grad_tolerance(terms, max_abs(x), max_abs(dy)) : 0.0f;
  MESSAGE("max |dW winograd - dW direct| = " << ref::max_abs_diff(direct.wg, wino.wg.data()) << " (bound " << wg_tol
                                             << ")");
  CHECK(ref::max_abs_diff(direct.wg, wino.wg.data()) <= wg_tol);
  if (wgrad) CHECK(ref::max_abs_diff(direct.wg, wino.wg.data()) > 0.0f);  // not the direct path's sums
  CHECK(ref::max_abs_diff(direct.bg, wino.bg.data()) <= (wgrad ? float(terms) * FLT_EPSILON * max_abs(dy) : 0.0f));
  const std::vector<float> w(layer.weight().begin(), layer.weight().end());
  CHECK(ref::max_abs_diff(direct.dx, wino.dx.data()) <= winograd_tolerance(Out, max_abs(w), max_abs(dy)));
  CHECK(ref::max_abs_diff(direct.dx, wino.dx.data()) > 0.0f);  // dx by Winograd
}
}  // namespace

TEST_CASE("a narrow Conv3x3Relu takes its gradients by Winograd where the rules say, pooled or not" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  check_narrow_layer_gradients<32, 32, false>(40);
  check_narrow_layer_gradients<16, 32, true>(41);  // cin < cout: the products the other way round
  check_narrow_layer_gradients<32, 16, true>(42);
  check_narrow_layer_gradients<8, 16, true>(43);  // the width/8 net's block 2: dx by Winograd only
}
