#pragma once
// Naive reference implementations, written for obviousness, not speed: the library's kernels are
// checked against them.

#include <algorithm>
#include <random>
#include <vector>

namespace ref {

/// Direct 3x3 convolution, padding 1, stride 1, plus bias, then ReLU. NCHW.
inline std::vector<float> conv3x3_relu(const std::vector<float>& x, const std::vector<float>& w,
                                       const std::vector<float>& b, int n, int cin, int cout, int h, int wd) {
  std::vector<float> y(std::size_t(n) * cout * h * wd);
  for (int i = 0; i < n; ++i)
    for (int co = 0; co < cout; ++co)
      for (int r = 0; r < h; ++r)
        for (int c = 0; c < wd; ++c) {
          double acc = b[co];
          for (int ci = 0; ci < cin; ++ci)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int sy = r + ky - 1, sx = c + kx - 1;
                if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
                acc += double(w[((std::size_t(co) * cin + ci) * 3 + ky) * 3 + kx]) *
                       x[((std::size_t(i) * cin + ci) * h + sy) * wd + sx];
              }
          y[((std::size_t(i) * cout + co) * h + r) * wd + c] = float(std::max(acc, 0.0));
        }
  return y;
}

/// Weight gradient of y = relu(conv3x3(x) + b) for an upstream gradient dy, in double.
inline std::vector<double> conv3x3_relu_weight_grad(const std::vector<float>& x, const std::vector<float>& y,
                                                    const std::vector<float>& dy, int n, int cin, int cout, int h,
                                                    int wd) {
  std::vector<double> dw(std::size_t(cout) * cin * 9, 0.0);
  for (int i = 0; i < n; ++i)
    for (int co = 0; co < cout; ++co)
      for (int r = 0; r < h; ++r)
        for (int c = 0; c < wd; ++c) {
          const std::size_t o = ((std::size_t(i) * cout + co) * h + r) * wd + c;
          if (!(y[o] > 0.0f)) continue;
          for (int ci = 0; ci < cin; ++ci)
            for (int k = 0; k < 9; ++k) {
              const int sy = r + k / 3 - 1, sx = c + k % 3 - 1;
              if (sy < 0 || sy >= h || sx < 0 || sx >= wd) continue;
              dw[(std::size_t(co) * cin + ci) * 9 + std::size_t(k)] +=
                  double(dy[o]) * x[((std::size_t(i) * cin + ci) * h + sy) * wd + sx];
            }
        }
  return dw;
}

inline std::vector<float> maxpool2x2(const std::vector<float>& x, int planes, int h, int w) {
  const int oh = h / 2, ow = w / 2;
  std::vector<float> y(std::size_t(planes) * oh * ow);
  for (int p = 0; p < planes; ++p)
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) {
        float m = x[(std::size_t(p) * h + 2 * i) * w + 2 * j];
        for (int dy = 0; dy < 2; ++dy)
          for (int dx = 0; dx < 2; ++dx) m = std::max(m, x[(std::size_t(p) * h + 2 * i + dy) * w + 2 * j + dx]);
        y[(std::size_t(p) * oh + i) * ow + j] = m;
      }
  return y;
}

inline std::vector<float> linear(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                                 int n, int in, int out, bool relu) {
  std::vector<float> y(std::size_t(n) * out);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < out; ++o) {
      double acc = b[o];
      for (int k = 0; k < in; ++k) acc += double(w[std::size_t(o) * in + k]) * x[std::size_t(i) * in + k];
      y[std::size_t(i) * out + o] = float(relu ? std::max(acc, 0.0) : acc);
    }
  return y;
}

inline std::vector<float> random_vector(std::size_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& e : v) e = dist(gen);
  return v;
}

inline float max_abs_diff(const std::vector<float>& a, const float* b) {
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace ref
