// Semantics that a kernel can get subtly wrong while still passing loose checks: where a 2x2
// max-pool sends its gradient when elements tie or are NaN (on every pool path: plain, AVX-512, the
// fused winner masks and the one-channel conv + pool), dropout masks and scale, and the softmax's
// overflow guard. Expected values come from a reference written out here (PyTorch's rule), not from
// the library's own code; inputs are small multiples of powers of two, so every sum is exact and
// every comparison is equality.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "reference.hpp"

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

/// PyTorch's choice in one window, as its CPU kernel scans it (aten/src/ATen/native/cpu/
/// MaxPoolKernel.cpp): max = -inf, index = the first element; each element in row-major order is
/// taken when `val > max || isnan(val)`. So ties go to the first maximum and NaN to the last NaN
/// (checked against torch 1.13: max_pool2d of [[1, nan], [nan, 3]] routes the gradient to the
/// bottom-left element).
int torch_winner(const std::array<float, 4>& v, float& max) {
  int index = 0;
  max = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < 4; ++k)
    if (v[std::size_t(k)] > max || std::isnan(v[std::size_t(k)])) {
      max = v[std::size_t(k)];
      index = k;
    }
  return index;
}

bool same_or_both_nan(float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); }

/// Elements (or both NaN) that differ between expected and found.
int mismatches(const std::vector<float>& expected, const float* found) {
  int bad = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) bad += !same_or_both_nan(expected[i], found[i]);
  return bad;
}

struct Plane {
  int planes, h, w;
};

// Heights and widths, odd and even, that leave vector tails of every kind: 3, 17, 25 and 112
// windows per row (1, 2, 2 and 7 steps of 16), one window, rows and columns dropped by the floor rule.
constexpr Plane kPlanes[] = {{2, 2, 6}, {2, 5, 34}, {1, 4, 50}, {2, 3, 224}, {1, 6, 225}, {2, 2, 2}, {1, 7, 33}};

/// Inputs whose windows run through every tie pattern: window q of the plane takes four base-4
/// digits of q (each element one of `values`), so top right and bottom left tie above top left, all
/// four tie, three tie, and so on, at every lane position over the rows. With nan, half the windows of
/// the even pooled rows also hold NaN at the positions given by four more bits (every NaN pattern;
/// odd rows hold none, so vector steps without NaN are exercised next to steps with). Elements that
/// the floor rule drops hold 9, above everything: a kernel that read them would pick them.
std::vector<float> patterned(const Plane& s, std::array<float, 4> values, bool nan) {
  const int oh = s.h / 2, ow = s.w / 2;
  std::vector<float> x(std::size_t(s.planes) * s.h * s.w, 9.0f);
  for (int p = 0; p < s.planes; ++p)
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) {
        const int q = (p * oh + i) * ow + j + 37 * p;
        const int nan_bits = nan && i % 2 == 0 && q % 32 >= 16 ? q % 16 : 0;
        for (int e = 0; e < 4; ++e) {
          const int digit = (q >> (2 * e)) & 3;
          float& v = x[(std::size_t(p) * s.h + 2 * i + e / 2) * s.w + 2 * j + e % 2];
          v = nan_bits >> e & 1 ? kNaN : values[std::size_t(digit)];
        }
      }
  return x;
}

/// Pooled gradients: nonzero multiples of 1/8 in [-2, 2], different from window to window.
std::vector<float> pooled_gradient(std::size_t n, unsigned seed) {
  auto g = ref::random_vector(n, seed, -2.0f, 2.0f);
  for (float& v : g) v = std::round(v * 8.0f) / 8.0f + (v < 0 ? -0.125f : 0.125f);
  return g;
}

/// PyTorch's max_pool2d forward (y) and backward (dx) for `planes` planes; with relu, x is a ReLU
/// output and dx is also the gradient behind that ReLU (torch's ReLU passes the gradient where
/// its output is positive or NaN).
void reference_pool(const std::vector<float>& x, const std::vector<float>& dy, const Plane& s, bool relu,
                    std::vector<float>& y, std::vector<float>& dx) {
  const int oh = s.h / 2, ow = s.w / 2;
  y.assign(std::size_t(s.planes) * oh * ow, 0.0f);
  dx.assign(x.size(), 0.0f);
  for (int p = 0; p < s.planes; ++p)
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) {
        std::array<std::size_t, 4> at{};
        std::array<float, 4> v{};
        for (int e = 0; e < 4; ++e) {
          at[std::size_t(e)] = (std::size_t(p) * s.h + 2 * i + e / 2) * s.w + 2 * j + e % 2;
          v[std::size_t(e)] = x[at[std::size_t(e)]];
        }
        float m = 0;
        const int k = torch_winner(v, m);
        const std::size_t o = (std::size_t(p) * oh + i) * ow + j;
        y[o] = m;
        if (!relu || !(m <= 0.0f)) dx[at[std::size_t(k)]] = dy[o];
      }
}

using PoolForward = void (*)(const float*, float*, long, int, int, int);
using PoolBackward = void (*)(const float*, const float*, float*, long, int, int, int, bool);

/// A pool path (forward, backward) against the reference, on tie patterns, with and without the
/// ReLU mask, then with NaN.
void check_pool_path(PoolForward forward, PoolBackward backward) {
  for (const Plane& s : kPlanes)
    for (bool relu : {false, true})
      for (bool nan : {false, true})
        for (int threads : {1, 2}) {
          CAPTURE(s.h);
          CAPTURE(s.w);
          CAPTURE(relu);
          CAPTURE(nan);
          CAPTURE(threads);
          // ReLU outputs are >= 0; otherwise negative values and ties among them too.
          const auto x = patterned(s, relu ? std::array{0.0f, 1.0f, 2.0f, 3.0f} : std::array{-1.5f, -0.5f, 1.0f, 2.0f},
                                   nan);
          const auto dy = pooled_gradient(std::size_t(s.planes) * (s.h / 2) * (s.w / 2), unsigned(s.h * s.w));
          std::vector<float> y_expected, dx_expected;
          reference_pool(x, dy, s, relu, y_expected, dx_expected);
          std::vector<float> y(y_expected.size(), -7.0f), dx(x.size(), -7.0f);
          forward(x.data(), y.data(), s.planes, s.h, s.w, threads);
          backward(x.data(), dy.data(), dx.data(), s.planes, s.h, s.w, threads, relu);
          CHECK(mismatches(y_expected, y.data()) == 0);
          CHECK(mismatches(dx_expected, dx.data()) == 0);
        }
}

}  // namespace

TEST_CASE("the reference pool follows PyTorch on hand-written windows (checked with torch 1.13)") {
  // The values torch.nn.functional.max_pool2d gives: (window in row-major order, arg-max).
  const std::array<std::pair<std::array<float, 4>, int>, 9> cases{{{{1, 2, 2, 0}, 1},
                                                                   {{1, 2, 0, 2}, 1},
                                                                   {{1, 0, 2, 2}, 2},
                                                                   {{1, 1, 1, 1}, 0},
                                                                   {{kNaN, 1, 2, 3}, 0},
                                                                   {{1, 2, kNaN, 3}, 2},
                                                                   {{1, kNaN, kNaN, 3}, 2},
                                                                   {{kNaN, kNaN, kNaN, kNaN}, 3},
                                                                   {{std::numeric_limits<float>::infinity(), kNaN, 1, 1}, 1}}};
  for (const auto& [window, arg_max] : cases) {
    float m = 0;
    CHECK(torch_winner(window, m) == arg_max);
    CHECK(std::isnan(m) == (std::isnan(window[0]) || std::isnan(window[1]) || std::isnan(window[2]) ||
                            std::isnan(window[3])));
  }
}

TEST_CASE("plain max-pool: ties go to the first maximum, NaN propagates and takes the gradient, as in PyTorch") {
  check_pool_path(vgg::cpu::maxpool2x2_forward_plain, vgg::cpu::maxpool2x2_backward_plain);
}

TEST_CASE("AVX-512 max-pool: ties go to the first maximum, NaN propagates and takes the gradient, as in PyTorch" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  check_pool_path(vgg::cpu::maxpool2x2_forward, vgg::cpu::maxpool2x2_backward);
}

TEST_CASE("fused pool's winner masks: one winner per window, PyTorch's, ties and NaN included" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
#ifdef VGG_FAST_KERNELS
  for (const Plane& s : kPlanes)
    for (bool nan : {false, true})
      for (int split : {0, 1}) {  // the pooled rows in one band, or two (the second's input from its first row)
        CAPTURE(s.h);
        CAPTURE(s.w);
        CAPTURE(nan);
        CAPTURE(split);
        const int oh = s.h / 2, ow = s.w / 2;
        const auto x = patterned(s, {0.0f, 1.0f, 2.0f, 3.0f}, nan);  // a ReLU output
        const auto dy = pooled_gradient(std::size_t(s.planes) * oh * ow, unsigned(s.w + 3 * s.h));
        std::vector<float> y_expected, dz_expected;
        reference_pool(x, dy, s, /*relu=*/true, y_expected, dz_expected);
        std::vector<float> y(y_expected.size(), -7.0f), dz(x.size(), -7.0f);
        const long words = vgg::cpu::winner_plane_words(s.h, s.w);
        std::vector<std::uint32_t> winners(std::size_t(s.planes * words), 0xA5A5A5A5u);  // all overwritten
        double bias_grad = 0, bias_expected = 0;
        for (int p = 0; p < s.planes; ++p) {
          const float* xp = x.data() + long(p) * s.h * s.w;
          float* yp = y.data() + long(p) * oh * ow;
          std::uint32_t* wp = winners.data() + p * words;
          const int mid = split ? oh / 2 : oh;
          vgg::cpu::maxpool2x2_rows_winners(xp, 0, yp, wp, s.w, 0, mid);
          vgg::cpu::maxpool2x2_rows_winners(xp + long(2 * mid) * s.w, 2 * mid, yp, wp, s.w, mid, oh);
          bias_grad += vgg::cpu::unpool_from_winners_plane(wp, dy.data() + long(p) * oh * ow,
                                                           dz.data() + long(p) * s.h * s.w, s.h, s.w);
        }
        for (float v : dz_expected) bias_expected += v;
        CHECK(mismatches(y_expected, y.data()) == 0);
        CHECK(mismatches(dz_expected, dz.data()) == 0);
        CHECK(bias_grad == bias_expected);
      }
#endif
}

#ifdef VGG_FAST_KERNELS
namespace {

/// Direct 3x3 convolution (padding 1) + bias of one-channel images, the padding's zeros multiplied
/// like any input (as torch does: a NaN weight then makes every output NaN), no ReLU.
std::vector<float> conv_one_channel(const std::vector<float>& x, const std::vector<float>& w,
                                    const std::vector<float>& b, int cout, int h, int wd) {
  std::vector<float> z(std::size_t(cout) * h * wd);
  for (int co = 0; co < cout; ++co)
    for (int r = 0; r < h; ++r)
      for (int c = 0; c < wd; ++c) {
        float acc = b[std::size_t(co)];
        for (int k = 0; k < 9; ++k) {
          const int sy = r + k / 3 - 1, sx = c + k % 3 - 1;
          const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < wd;
          acc += w[std::size_t(co * 9 + k)] * (inside ? x[std::size_t(sy) * wd + sx] : 0.0f);
        }
        z[(std::size_t(co) * h + r) * wd + c] = acc;
      }
  return z;
}

}  // namespace
#endif

TEST_CASE("one-channel conv + ReLU + pool: weight gradient from PyTorch's winner, ties and NaN included" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
#ifdef VGG_FAST_KERNELS
  // Channels whose conv is the input times 1 or 2 (centre tap only): the conv output keeps the
  // input's tie patterns, and the weight gradient of each tap reads the winner's neighbour, so a
  // gradient sent to a second element of a window, or to the wrong one, changes it. Modes:
  // 1: some pixels are NaN (their 3x3 neighbourhood's outputs too); 2: channel 1 has a NaN tap, so
  // all its outputs are NaN and each window's gradient goes to its bottom right; 3 and 6: a NaN pixel
  // only in the first row of the second band, or the last of the first (which the other band reads
  // too, as the edge of its taps); 4: some
  // pixels are infinite (0 x inf is NaN); 5: huge finite pixels, which channel 1 (taps 2 and -2)
  // overflows to +-inf. Which sums overflow depends on their order, so mode 5 takes the conv output
  // from the unfused kernel (the same FMA chains) and checks the pool behind it; it holds no NaN,
  // since a chain of FMAs cannot make one from finite inputs (each rounds once, and an infinite
  // partial sum stays so). Modes 4 and 5 leave the weight gradient (sums of inf) unchecked.
  struct Case {
    int cout, h, w;
  };
  // Channel counts: odd (the fused kernel takes channels in pairs), and 32 or 33 with aligned lines
  // of 32 windows (its streamed-line path, where an odd last channel is paired with itself).
  for (const Case c : {Case{3, 2, 6}, Case{3, 5, 34}, Case{3, 4, 50}, Case{3, 3, 224}, Case{3, 6, 35},
                       Case{32, 4, 64}, Case{33, 4, 64}, Case{3, 19, 40}})
    for (int mode = 0; mode < 7; ++mode) {
      CAPTURE(c.cout);
      CAPTURE(c.h);
      CAPTURE(c.w);
      CAPTURE(mode);
      const int oh = c.h / 2, ow = c.w / 2;
      const Plane plane{1, c.h, c.w};
      auto x = patterned(plane, {-1.0f, 0.0f, 1.0f, 2.0f}, false);
      const int band_start = 2 * (oh / 2);  // where the second band starts, below
      if (mode == 1)
        for (std::size_t i = 5; i < x.size(); i += 97) x[i] = kNaN;
      const int nan_row = mode == 3 ? band_start : band_start - 1;
      const bool band_edge_nan = (mode == 3 || mode == 6) && band_start > 0 && nan_row < c.h;
      if (band_edge_nan) x[std::size_t(nan_row * c.w + (nan_row * 7) % c.w)] = kNaN;
      if (mode == 4)
        for (std::size_t i = 3; i < x.size(); i += 41) x[i] = std::numeric_limits<float>::infinity();
      if (mode == 5)
        for (std::size_t i = 3; i + 1 < x.size(); i += 41) x[i] = x[i + 1] = 3e38f;
      std::vector<float> weight(std::size_t(c.cout) * 9, 0.0f), bias(std::size_t(c.cout), 0.0f);
      for (int co = 0; co < c.cout; ++co) weight[std::size_t(co * 9 + 4)] = co % 2 ? 2.0f : 1.0f;
      if (mode == 2) weight[9 + 0] = kNaN;
      if (mode == 5) weight[9 + 3] = -2.0f;
      const auto dy = pooled_gradient(std::size_t(c.cout) * oh * ow, unsigned(c.w * 7 + c.h));

      // Expected: torch's conv, ReLU, pool; the weight gradient by the chain rule from the winners.
      const auto z = conv_one_channel(x, weight, bias, c.cout, c.h, c.w);
      std::vector<float> relu_z(z.size());
      for (std::size_t i = 0; i < z.size(); ++i) relu_z[i] = z[i] > 0.0f || std::isnan(z[i]) ? z[i] : 0.0f;
      if (mode == 5)  // the unfused kernel's ReLU keeps NaN (checked below)
        vgg::cpu::avx512::conv3x3_relu_one_channel(x.data(), weight.data(), bias.data(), relu_z.data(), c.cout, c.h,
                                                   c.w, 0, c.h);
      std::vector<float> pooled_expected, dz;
      reference_pool(relu_z, dy, Plane{c.cout, c.h, c.w}, /*relu=*/true, pooled_expected, dz);
      long nan_windows = 0, infinite_windows = 0;
      for (float v : pooled_expected) {
        nan_windows += std::isnan(v);
        infinite_windows += std::isinf(v);
      }
      // The case has what it says.
      CHECK((nan_windows > 0) == (mode != 0 && mode != 5 && ((mode != 3 && mode != 6) || band_edge_nan)));
      if (mode == 5) CHECK(infinite_windows > 0);
      std::vector<float> dw_expected(weight.size(), 0.0f), db_expected(bias.size(), 0.0f);
      for (int co = 0; co < c.cout; ++co)
        for (int r = 0; r < c.h; ++r)
          for (int col = 0; col < c.w; ++col) {
            const float g = dz[(std::size_t(co) * c.h + r) * c.w + col];
            if (g == 0.0f) continue;
            db_expected[std::size_t(co)] += g;
            for (int k = 0; k < 9; ++k) {
              const int sy = r + k / 3 - 1, sx = col + k % 3 - 1;
              if (sy >= 0 && sy < c.h && sx >= 0 && sx < c.w)
                dw_expected[std::size_t(co * 9 + k)] += g * x[std::size_t(sy) * c.w + sx];
            }
          }

      for (int split : {0, 1}) {  // the rows in one band, or two (as threads split an image)
        CAPTURE(split);
        vgg::Buffer<float> pooled(pooled_expected.size());  // aligned, as the network's (streamed stores)
        std::fill(pooled.data(), pooled.data() + pooled_expected.size(), -7.0f);
        std::vector<std::uint32_t> winners(std::size_t(c.cout * vgg::cpu::winner_plane_words(c.h, c.w)), 0xA5A5A5A5u);
        const int mid = split ? band_start : c.h;
        vgg::cpu::avx512::conv3x3_relu_pool_one_channel(x.data(), weight.data(), bias.data(), pooled.data(),
                                                        winners.data(), c.cout, c.h, c.w, 0, mid);
        vgg::cpu::avx512::conv3x3_relu_pool_one_channel(x.data(), weight.data(), bias.data(), pooled.data(),
                                                        winners.data(), c.cout, c.h, c.w, mid, c.h);
        CHECK(mismatches(pooled_expected, pooled.data()) == 0);
        vgg::Buffer<float> scratch(std::size_t(vgg::cpu::avx512::one_channel_scratch_size(c.w)));
        std::vector<float> dw(weight.size(), 0.0f), db(bias.size(), 0.0f);
        vgg::cpu::avx512::conv3x3_relu_pool_one_channel_grads(x.data(), winners.data(), dy.data(), dw.data(),
                                                              db.data(), c.cout, c.h, c.w, scratch.data());
        if (mode < 4) CHECK(mismatches(dw_expected, dw.data()) == 0);
        CHECK(mismatches(db_expected, db.data()) == 0);
        if (mode == 2) CHECK(std::isfinite(dw[9]));  // a NaN weight's channel: finite gradients, from finite inputs
      }
    }
#endif
}

TEST_CASE("the one-channel conv's ReLU keeps NaN, as torch's does" * doctest::skip(!vgg::cpu::kFastKernels)) {
#ifdef VGG_FAST_KERNELS
  const int h = 3, w = 20;
  std::vector<float> x(std::size_t(h * w), 1.0f), weight(9, 0.0f), bias{-5.0f}, y(x.size(), -7.0f);
  weight[4] = 1.0f;
  x[std::size_t(w + 17)] = kNaN;
  vgg::cpu::avx512::conv3x3_relu_one_channel(x.data(), weight.data(), bias.data(), y.data(), 1, h, w, 0, h);
  for (int r = 0; r < h; ++r)
    for (int c = 0; c < w; ++c) {
      CAPTURE(r);
      CAPTURE(c);
      // 1 - 5 < 0, except where a tap reads the NaN (0 x NaN is NaN, as in torch's conv).
      const bool reads_nan = std::abs(r - 1) <= 1 && std::abs(c - 17) <= 1;
      CHECK(same_or_both_nan(y[std::size_t(r * w + c)], reads_nan ? kNaN : 0.0f));
    }
#endif
}

TEST_CASE("dropout with p != 0.5: keeps about 1 - p of the elements, scales them by 1/(1 - p), backward alike") {
  const long count = 200000;
  std::vector<float> x(std::size_t(count), 2.0f), y(x.size()), dx(x.size());
  for (float p : {0.2f, 0.8f}) {
    CAPTURE(p);
    vgg::cpu::dropout_forward(x.data(), y.data(), count, p, 11, 3, 2);
    vgg::cpu::dropout_backward(x.data(), dx.data(), count, p, 11, 3, 2);
    const double kept_value = 2.0 / (1.0 - double(p));  // 2.5 or 10; 1/p would give 10 or 2.5
    long kept = 0, wrong = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const bool keep = y[i] != 0.0f;
      kept += keep;
      wrong += keep && y[i] != doctest::Approx(kept_value).epsilon(1e-6);
      wrong += dx[i] != y[i];  // the same mask and scale
    }
    CHECK(wrong == 0);
    // Binomial: the standard deviation of the kept fraction is below 0.001 here; p and 1 - p
    // swapped would be off by 0.6.
    CHECK(std::abs(double(kept) / double(count) - (1.0 - double(p))) < 0.01);
  }
}

TEST_CASE("two dropout layers of one training step draw different masks") {
  // Classifier<256, 256>: Linear(1, 256), ReLU, Dropout, Linear(256, 256), ReLU, Dropout, Linear(256, 256).
  // With the first linear giving 1 everywhere and the others the identity, the logits are
  // 4 * mask1 * mask2; with the second giving 1 everywhere instead, they are 2 * mask2. Both passes
  // at the same step draw the same masks, so the two give mask1 wherever mask2 keeps.
  using Net = vgg::Vgg<vgg::Input<1, 2, 2>, vgg::VggBlock<1, 1, 1>, vgg::Classifier<256, 256, 0.5>>;
  constexpr int hidden = 256, batch = 4;
  Net net(1);
  auto set = [&](bool second_is_identity) {
    net.for_each_parameter([&](const vgg::ParameterView& p) {
      const std::string name = p.name;
      std::fill(p.value.begin(), p.value.end(), 0.0f);
      if (name == "fc.1.bias" || (name == "fc.4.bias" && !second_is_identity)) std::fill(p.value.begin(), p.value.end(), 1.0f);
      if (name == "fc.7.weight" || (name == "fc.4.weight" && second_is_identity))
        for (int i = 0; i < hidden; ++i) p.value[std::size_t(i) * hidden + std::size_t(i)] = 1.0f;
    });
  };
  const std::vector<float> x(batch * 4, 1.0f);
  net.train();
  const std::uint64_t step = net.step();
  set(true);
  const auto both = net.forward(x, batch);
  const std::vector<float> product(both.data(), both.data() + both.size());
  net.set_step(step);
  set(false);
  const auto second = net.forward(x, batch);
  long kept_second = 0, kept_both = 0, bad = 0;
  for (std::size_t i = 0; i < product.size(); ++i) {
    bad += !(second.data()[i] == 0.0f || second.data()[i] == 2.0f) + !(product[i] == 0.0f || product[i] == 4.0f);
    bad += product[i] != 0.0f && second.data()[i] == 0.0f;  // kept by both implies kept by the second
    kept_second += second.data()[i] != 0.0f;
    kept_both += product[i] != 0.0f;
  }
  CHECK(bad == 0);
  // Where the second mask keeps, the first keeps about half the time: independent masks. The same
  // mask twice would keep all of them. (About 512 elements: the standard deviation is about 0.022.)
  REQUIRE(kept_second > 400);
  const double first_given_second = double(kept_both) / double(kept_second);
  CHECK(first_given_second > 0.4);
  CHECK(first_given_second < 0.6);
}

TEST_CASE("softmax cross-entropy stays finite and exact for logits around 1e3 and 1e4 (exp overflows without the max)") {
  // Logits (b, b + 1, b + 2): the loss of label 0 is log(1 + e + e^2) = 2.4076059644443806 whatever b
  // (log-sum-exp minus the label's logit), and the gradient is softmax - one_hot: (e^0, e^1, e^2) /
  // (1 + e + e^2) = (0.09003057317038046, 0.24472847105479764, 0.6652409557748219), minus 1 on the
  // label. exp(1000) already overflows a double; e^-10002 underflows it to 0.
  for (float base : {1000.0f, 10000.0f, -10000.0f}) {
    CAPTURE(base);
    const std::vector<float> logits{base, base + 1.0f, base + 2.0f, base + 2.0f, base + 1.0f, base};
    const std::vector<std::int32_t> labels{0, 1};
    std::vector<float> grad(logits.size(), 7.0f);
    const auto r = vgg::softmax_cross_entropy(logits, labels, 3, grad);
    // Sample 0 has label 0: 2.4076...; sample 1 (b + 2, b + 1, b) has label 1: log(1 + e + e^2) - 1.
    CHECK(std::isfinite(r.loss));
    CHECK(r.loss == doctest::Approx((2.4076059644443806 + 1.4076059644443806) / 2).epsilon(1e-6));
    const double expected[6] = {(0.09003057317038046 - 1) / 2, 0.24472847105479764 / 2, 0.6652409557748219 / 2,
                                0.6652409557748219 / 2,        (0.24472847105479764 - 1) / 2, 0.09003057317038046 / 2};
    for (std::size_t i = 0; i < grad.size(); ++i) {
      CAPTURE(i);
      CHECK(grad[i] == doctest::Approx(expected[i]).epsilon(1e-5));
    }
    CHECK(r.correct == 0);
  }
}
