#pragma once
// CPU kernel: AdaptiveAvgPool2d((oh, ow)) forward and backward over planes, split across threads.
// The per-cell arithmetic is elementwise.hpp's, shared with the CUDA kernel. Plain loops: the pool
// runs once per image between features and classifier (7x7 cells), far from a step's cost.

#include "vgg/cpu/maxpool.hpp"  // detail::for_each_plane
#include "vgg/elementwise.hpp"

namespace vgg::cpu {

/// y (planes x oh x ow) = the adaptive average pool of x (planes x h x w).
inline void adaptive_avgpool_forward(const float* x, float* y, long planes, int h, int w, int oh, int ow,
                                     int threads) {
  detail::for_each_plane(planes, threads, [=](long p) {
    const float* xp = x + p * long(h) * w;
    float* yp = y + p * long(oh) * ow;
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) yp[i * ow + j] = elementwise::adaptive_avgpool(xp, h, w, oh, ow, i, j);
  });
}

/// dx (planes x h x w) = the gradient of the pool's input from dy (planes x oh x ow); every
/// element of dx is written.
inline void adaptive_avgpool_backward(const float* dy, float* dx, long planes, int h, int w, int oh, int ow,
                                      int threads) {
  detail::for_each_plane(planes, threads, [=](long p) {
    const float* dyp = dy + p * long(oh) * ow;
    float* dxp = dx + p * long(h) * w;
    for (int r = 0; r < h; ++r)
      for (int c = 0; c < w; ++c) dxp[r * w + c] = elementwise::adaptive_avgpool_input_grad(dyp, h, w, oh, ow, r, c);
  });
}

}  // namespace vgg::cpu
