#pragma once
// im2col for 3x3 kernels, stride 1, padding 1, over a band of output rows of one image.

#include <algorithm>
#include <cstring>

namespace vgg::cpu {

/// Writes col[(ci*9 + ky*3 + kx)][(r - r0)*w + x] = in[ci][r + ky - 1][x + kx - 1] (0 outside),
/// for rows r in [r0, r1). `in` is one C x H x W image; `col` holds (cin*9) x ((r1-r0)*w) floats.
inline void im2col3x3(const float* in, int cin, int h, int w, int r0, int r1, float* col) {
  const long cols = long(r1 - r0) * w;
  for (int ci = 0; ci < cin; ++ci) {
    const float* plane = in + long(ci) * h * w;
    for (int ky = 0; ky < 3; ++ky) {
      for (int kx = 0; kx < 3; ++kx) {
        float* dst = col + (long(ci) * 9 + ky * 3 + kx) * cols;
        for (int r = r0; r < r1; ++r, dst += w) {
          const int sy = r + ky - 1;
          if (sy < 0 || sy >= h) {
            std::fill(dst, dst + w, 0.0f);
            continue;
          }
          const float* src = plane + long(sy) * w;
          if (kx == 0) {  // dst[x] = src[x - 1]
            dst[0] = 0.0f;
            std::memcpy(dst + 1, src, sizeof(float) * std::size_t(w - 1));
          } else if (kx == 1) {
            std::memcpy(dst, src, sizeof(float) * std::size_t(w));
          } else {  // dst[x] = src[x + 1]
            std::memcpy(dst, src + 1, sizeof(float) * std::size_t(w - 1));
            dst[w - 1] = 0.0f;
          }
        }
      }
    }
  }
}

}  // namespace vgg::cpu

namespace vgg::cpu {

/// The adjoint of im2col3x3: in[ci][r + ky - 1][x + kx - 1] += col[(ci*9 + ky*3 + kx)][(r - r0)*w + x]
/// for rows r in [r0, r1). Touches input rows r0 - 1 .. r1 only.
inline void col2im3x3_add(const float* col, int cin, int h, int w, int r0, int r1, float* in) {
  const long cols = long(r1 - r0) * w;
  for (int ci = 0; ci < cin; ++ci) {
    float* plane = in + long(ci) * h * w;
    for (int ky = 0; ky < 3; ++ky) {
      for (int kx = 0; kx < 3; ++kx) {
        const float* src = col + (long(ci) * 9 + ky * 3 + kx) * cols;
        for (int r = r0; r < r1; ++r, src += w) {
          const int sy = r + ky - 1;
          if (sy < 0 || sy >= h) continue;
          float* dst = plane + long(sy) * w;
          if (kx == 0) {
            for (int x = 1; x < w; ++x) dst[x - 1] += src[x];
          } else if (kx == 1) {
            for (int x = 0; x < w; ++x) dst[x] += src[x];
          } else {
            for (int x = 0; x + 1 < w; ++x) dst[x + 1] += src[x];
          }
        }
      }
    }
  }
}

}  // namespace vgg::cpu
