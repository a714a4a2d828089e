#pragma once
// AdaptiveAvgPool2d((OH, OW)): torchvision's `avgpool` between `features` and `classifier`. Output
// cell (i, j) averages input rows floor(i*H/OH) .. ceil((i+1)*H/OH)-1 and the same for columns,
// exactly as PyTorch bins them (bins overlap when the sizes do not divide). When the input is
// already OH x OW, every bin is one pixel: the layer is the identity and the network skips it.
//
// The pooling runs on the host: backends whose memory is the host's only. On a device backend a
// net whose features are not already OH x OW is refused at compile time (no kernel yet).

#include <algorithm>
#include <string>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

namespace detail {
constexpr int adaptive_start(int i, int in, int out) { return (i * in) / out; }
constexpr int adaptive_end(int i, int in, int out) { return ((i + 1) * in + out - 1) / out; }
}  // namespace detail

template <Shape In, int OH, int OW, class B>
class AdaptiveAvgPool2d {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape = In;
  static constexpr Shape output_shape{In.c, OH, OW};
  static constexpr bool identity = In.h == OH && In.w == OW;
  static_assert(identity || B::host_memory,
                "vgg::AdaptiveAvgPool2d: this backend has no adaptive-average-pool kernel yet; on a device backend "
                "the torchvision-layout nets need an input whose features are already 7x7 (224x224 for VGG).");
  static constexpr long long num_params = 0;
  static constexpr int torch_modules = 1;
  static constexpr bool ends_block = false;
  static constexpr bool is_adaptive_avg_pool = true;  // torchvision's top-level `avgpool` module
  static constexpr double flops_per_sample = identity ? 0.0 : double(In.size());
  static constexpr bool is_identity(Mode) { return identity; }

  void reset_parameters(Rng&, Context&) {}
  void reserve(Context&, int) {}
  void reserve_backward(Context&, int) {}
  void forward(Context&, const float* x, float* y, int n, const RunContext&) {
    if constexpr (!identity) {
      const long planes = long(n) * In.c;
      for (long p = 0; p < planes; ++p) {
        const float* xp = x + p * In.h * In.w;
        float* yp = y + p * OH * OW;
        for (int i = 0; i < OH; ++i) {
          const int h0 = detail::adaptive_start(i, In.h, OH), h1 = detail::adaptive_end(i, In.h, OH);
          for (int j = 0; j < OW; ++j) {
            const int w0 = detail::adaptive_start(j, In.w, OW), w1 = detail::adaptive_end(j, In.w, OW);
            float sum = 0.0f;
            for (int h = h0; h < h1; ++h)
              for (int w = w0; w < w1; ++w) sum += xp[h * In.w + w];
            yp[i * OW + j] = sum / float((h1 - h0) * (w1 - w0));
          }
        }
      }
    }
  }
  void backward(Context&, const float*, const float*, float* dy, float* dx, int n, const RunContext&) {
    if constexpr (!identity) {
      if (!dx) return;
      const long planes = long(n) * In.c;
      std::fill(dx, dx + planes * In.h * In.w, 0.0f);
      for (long p = 0; p < planes; ++p) {
        float* dxp = dx + p * In.h * In.w;
        const float* dyp = dy + p * OH * OW;
        for (int i = 0; i < OH; ++i) {
          const int h0 = detail::adaptive_start(i, In.h, OH), h1 = detail::adaptive_end(i, In.h, OH);
          for (int j = 0; j < OW; ++j) {
            const int w0 = detail::adaptive_start(j, In.w, OW), w1 = detail::adaptive_end(j, In.w, OW);
            const float g = dyp[i * OW + j] / float((h1 - h0) * (w1 - w0));
            for (int h = h0; h < h1; ++h)
              for (int w = w0; w < w1; ++w) dxp[h * In.w + w] += g;
          }
        }
      }
    }
  }
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  static void describe(F&& emit) {
    emit("AdaptiveAvgPool2d(output_size=(" + std::to_string(OH) + ", " + std::to_string(OW) + "))");
  }
};

}  // namespace vgg
