#pragma once
// CPU kernel: 3x3 convolution (stride 1, padding 1) + bias + ReLU over an NCHW batch, by im2col
// and GEMM on bands of output rows. Work items are (image, band) pairs split statically across
// threads; every thread owns its column buffer and GEMM packing buffers, so no thread ever waits
// on another and no GEMM is threaded inside a threaded loop.

#include <omp.h>

#include <algorithm>
#include <vector>

#include "vgg/buffer.hpp"
#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/im2col.hpp"
#include "vgg/cpu/parallel.hpp"

namespace vgg::cpu {

struct Conv3x3Geometry {
  int cin, cout, h, w;
  long depth() const { return long(cin) * 9; }
  long plane() const { return long(h) * w; }
  /// Rows per band: about 2 MB of column buffer per thread, at least one row, at most the image.
  int max_band_rows() const {
    const long target_cols = std::clamp<long>((2L << 20) / (depth() * long(sizeof(float))), w, 4096);
    return int(std::clamp<long>(target_cols / w, 1, h));
  }
  /// Rows per band for a batch of n: bands shrink when there are fewer images than threads.
  int band_rows(int n, int threads) const {
    const int bands_wanted = (threads + n - 1) / n;
    return std::clamp((h + bands_wanted - 1) / bands_wanted, 1, max_band_rows());
  }
};

/// Per-thread work buffers of one convolution layer, allocated once.
struct Conv3x3Workspace {
  std::vector<Buffer<float>> columns;
  std::vector<GemmPlan> plans;
  void reserve(const Conv3x3Geometry& g, int threads) {
    if (int(columns.size()) < threads) {
      columns.resize(std::size_t(threads));
      plans.resize(std::size_t(threads));
    }
    const long band_cols = long(g.max_band_rows()) * g.w;
    for (int t = 0; t < threads; ++t) {
      columns[std::size_t(t)].reserve(std::size_t(g.depth() * band_cols));
      plans[std::size_t(t)].reserve(g.cout, band_cols, g.depth());
    }
  }
};

/// y = relu(conv3x3(x, weight) + bias) for n images.
/// requires: ws.reserve(g, t) with t >= threads; weight is cout x cin x 3 x 3, bias has cout entries;
///           x holds n x cin x h x w, y holds n x cout x h x w floats.
inline void conv3x3_relu_forward(const float* x, const float* weight, const float* bias, float* y, int n,
                                 const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  const int band = g.band_rows(n, threads);
  const int bands = (g.h + band - 1) / band;
  const long items = long(n) * bands, plane = g.plane();
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    const Range mine = split(items, tid, omp_get_num_threads());
    float* col = ws.columns[std::size_t(tid)].data();
    GemmPlan& plan = ws.plans[std::size_t(tid)];
    for (long item = mine.begin; item < mine.end; ++item) {
      const long image = item / bands;
      const int r0 = int(item % bands) * band, r1 = std::min(g.h, r0 + band);
      const long cols = long(r1 - r0) * g.w;
      im2col3x3(x + image * g.cin * plane, g.cin, g.h, g.w, r0, r1, col);
      float* out = y + image * g.cout * plane + long(r0) * g.w;
      for (int co = 0; co < g.cout; ++co) std::fill(out + co * plane, out + co * plane + cols, bias[co]);
      gemm<false, false>(g.cout, cols, g.depth(), weight, g.depth(), col, cols, out, plane, plan);
      for (int co = 0; co < g.cout; ++co) {
        float* row = out + co * plane;
        for (long i = 0; i < cols; ++i) row[i] = std::max(row[i], 0.0f);
      }
    }
  }
}

}  // namespace vgg::cpu
