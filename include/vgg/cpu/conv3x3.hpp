#pragma once
// CPU kernel: 3x3 convolution (stride 1, padding 1) + bias + ReLU over an NCHW batch, by im2col
// and GEMM on bands of output rows. Work items are (image, band) pairs split statically across
// threads; every thread owns its column buffer and GEMM packing buffers, so no thread ever waits
// on another and no GEMM is threaded inside a threaded loop.
//
// Two paths with one contract: the plain one (Eigen GEMM; the forward fills the bias in first and
// applies ReLU in a pass of its own) and, on AVX-512 targets, the fast one (our GEMM kernel, which
// adds the bias and applies ReLU as it stores each tile). The unsuffixed functions take the fast
// one where it is built. A first layer with one input channel takes kernels of its own
// (conv3x3_one_channel.hpp): its 9-deep GEMM would spend its time packing and storing.
//
// A conv followed by a 2x2 max-pool can run fused (conv3x3_relu_pool_forward/_backward): the pool
// is taken band by band while the conv's output is in cache, and the caller hands over a `state`
// buffer the size of the conv's output that carries what the backward pass needs: on the plain path
// the full-size output; on the fast path only the pool's winner masks (maxpool.hpp), the band's
// output being pooled from a per-thread buffer while in cache and never stored.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vgg/buffer.hpp"
#include "vgg/cpu/conv3x3_one_channel.hpp"
#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/im2col.hpp"
#include "vgg/cpu/maxpool.hpp"
#include "vgg/cpu/parallel.hpp"

namespace vgg::cpu {

struct Conv3x3Geometry {
  int cin, cout, h, w;
  constexpr long depth() const { return long(cin) * 9; }
  constexpr long plane() const { return long(h) * w; }
  /// Rows per band: about 512 KiB of column buffer per thread (it stays in L2 between im2col and the
  /// GEMM: measured 5% faster per training step than 2 MB), but at least 256 columns, so that wide
  /// layers still give the GEMM long panels; at least one row, at most the image.
  constexpr int max_band_rows() const {
    const long target_cols = std::clamp<long>((512L << 10) / (depth() * long(sizeof(float))), std::max(w, 256), 4096);
    return int(std::clamp<long>(target_cols / w, std::min(2, h), h));
  }
  /// Rows per band for a batch of n: bands shrink when there are fewer images than threads. `even`
  /// bands (for a fused 2x2 pool) hold whole pooling windows: an even count, at least 2 when h >= 2.
  constexpr int band_rows(int n, int threads, bool even = false) const {
    const int bands_wanted = (threads + n - 1) / n;
    const int rows = std::clamp((h + bands_wanted - 1) / bands_wanted, 1, max_band_rows());
    return even && h >= 2 ? std::max(2, rows - rows % 2) : rows;
  }
};

/// out[i] = sum over the first `threads` partial buffers of partials[t][i], for this thread's share of
/// the `count` elements (called by every thread of a parallel region, after a barrier).
inline void sum_partials(const std::vector<Buffer<float>>& partials, int threads, long count, float* out, int tid) {
  const Range mine = split(count, tid, threads);
  for (long i = mine.begin; i < mine.end; ++i) {
    float s = 0.0f;
    for (int t = 0; t < threads; ++t) s += partials[std::size_t(t)].data()[i];
    out[i] = s;
  }
}

/// Per-thread work buffers of one convolution layer, allocated once.
struct Conv3x3Workspace {
  std::vector<Buffer<float>> columns;
  std::vector<GemmPlan> plans;
  Buffer<float> packed_weights;  // fast forward: the weights packed once per call, shared by threads
  std::vector<Buffer<float>> band_outputs;  // fast fused pool: a band's conv output, pooled while in cache
  // Backward only: per-thread column gradients and partial weight/bias gradients.
  std::vector<Buffer<float>> column_grads, weight_grads, bias_grads;
  std::vector<GemmPlan> weight_plans, input_plans;
  std::vector<Buffer<float>> pooled_grads;  // fused pool backward: one image's dz per thread
  std::vector<Buffer<float>> split_inputs;  // fused one-channel backward: input columns laid out per block

  void reserve_backward(const Conv3x3Geometry& g, int threads, bool pooled = false) {
    reserve(g, threads);
    if (pooled) {
      if (int(pooled_grads.size()) < threads) pooled_grads.resize(std::size_t(threads));
      for (int t = 0; t < threads; ++t) pooled_grads[std::size_t(t)].reserve(std::size_t(g.cout * g.plane()));
#ifdef VGG_FAST_KERNELS
      if (g.cin == 1) {
        if (int(split_inputs.size()) < threads) split_inputs.resize(std::size_t(threads));
        for (int t = 0; t < threads; ++t)
          split_inputs[std::size_t(t)].reserve(std::size_t(avx512::one_channel_scratch_size(g.w)));
      }
#endif
    }
    if (int(column_grads.size()) < threads) {
      column_grads.resize(std::size_t(threads));
      weight_grads.resize(std::size_t(threads));
      bias_grads.resize(std::size_t(threads));
      weight_plans.resize(std::size_t(threads));
      input_plans.resize(std::size_t(threads));
    }
    const long band_cols = long(g.max_band_rows()) * g.w;
    for (int t = 0; t < threads; ++t) {
      column_grads[std::size_t(t)].reserve(std::size_t(g.depth() * band_cols));
      weight_grads[std::size_t(t)].reserve(std::size_t(g.depth() * g.cout));
      bias_grads[std::size_t(t)].reserve(std::size_t(g.cout));
      weight_plans[std::size_t(t)].reserve(g.cout, g.depth(), band_cols);
      input_plans[std::size_t(t)].reserve(g.depth(), band_cols, g.cout);
    }
  }

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
    if constexpr (kFastKernels) {
      packed_weights.reserve(std::size_t(avx512::packed_a_size(g.cout, g.depth())));
      if (int(band_outputs.size()) < threads) band_outputs.resize(std::size_t(threads));
      for (int t = 0; t < threads && g.cin != 1; ++t)
        band_outputs[std::size_t(t)].reserve(std::size_t(g.cout * band_cols));
    }
  }
};

/// True where the fused conv + pool keeps only winner masks in its state (half a byte per pooled
/// value, maxpool.hpp) instead of the full-size output: the fast path.
inline constexpr bool pool_state_is_winners(bool plain) { return kFastKernels && !plain; }

namespace detail {
/// y = relu(conv3x3(x) + b), or, when pooled is not null, pooled = maxpool2x2 of it with y as the
/// fused pass's state (see conv3x3_relu_pool_forward).
template <bool Plain>
inline void conv3x3_relu_forward(const float* x, const float* weight, const float* bias, float* y, float* pooled,
                                 int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  const int band = g.band_rows(n, threads, /*even=*/pooled != nullptr);
  const int bands = (g.h + band - 1) / band;
  const long items = long(n) * bands, plane = g.plane();
  const int ow = g.w / 2;
  const long pooled_plane = long(g.h / 2) * ow;
#ifdef VGG_FAST_KERNELS
  if (!Plain && g.cin != 1) avx512::pack_a_whole<false>(weight, g.depth(), g.cout, g.depth(), ws.packed_weights.data());
#endif
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
      float* yi = y + image * g.cout * plane;
      float* out = yi + long(r0) * g.w;
#ifdef VGG_FAST_KERNELS
      // Fused with the pool, an image's state (its output's slot, yi) holds its winner masks.
      auto* winners = reinterpret_cast<std::uint32_t*>(yi);
      if (!Plain && g.cin == 1) {  // kernels of their own
        const float* xi = x + image * plane;
        if (pooled)
          avx512::conv3x3_relu_pool_one_channel(xi, weight, bias, pooled + image * g.cout * pooled_plane, winners,
                                                g.cout, g.h, g.w, r0, r1);
        else
          avx512::conv3x3_relu_one_channel(xi, weight, bias, yi, g.cout, g.h, g.w, r0, r1);
        continue;
      }
#endif
      im2col3x3(x + image * g.cin * plane, g.cin, g.h, g.w, r0, r1, col);
#ifdef VGG_FAST_KERNELS
      if constexpr (!Plain) {
        // Fused with the pool, the band's output stays in a per-thread buffer: pooled, never stored.
        float* dst = pooled ? ws.band_outputs[std::size_t(tid)].data() : out;
        avx512::gemm<false>(g.cout, cols, g.depth(), weight, g.depth(), col, cols, dst, pooled ? cols : plane,
                            plan.fast_a_pack(), plan.fast_b_pack(), avx512::Epilogue{1.0f, false, bias, true},
                            ws.packed_weights.data());
        if (pooled) {
          const long winner_plane = winner_plane_words(g.h, g.w);
          for (int co = 0; co < g.cout; ++co)
            maxpool2x2_rows_winners(dst + co * cols, r0, pooled + (image * g.cout + co) * pooled_plane,
                                    winners + co * winner_plane, g.w, r0 / 2, r1 / 2);
        }
        continue;
      } else
#endif
      {
        for (int co = 0; co < g.cout; ++co) std::fill(out + co * plane, out + co * plane + cols, bias[co]);
        gemm_eigen<false, false>(g.cout, cols, g.depth(), weight, g.depth(), col, cols, out, plane, plan);
        for (int co = 0; co < g.cout; ++co) {
          float* row = out + co * plane;
          for (long i = 0; i < cols; ++i) row[i] = std::max(row[i], 0.0f);
        }
      }
      if (pooled) {  // the band's pooled rows, while its output is in cache (r0 even)
        float* pi = pooled + image * g.cout * pooled_plane;
        for (int co = 0; co < g.cout; ++co) {
          if constexpr (Plain)
            maxpool2x2_rows_plain(yi + co * plane, pi + co * pooled_plane, g.w, r0 / 2, r1 / 2);
          else
            maxpool2x2_rows(yi + co * plane, pi + co * pooled_plane, g.w, r0 / 2, r1 / 2);
        }
      }
    }
  }
}
}  // namespace detail

/// y = relu(conv3x3(x, weight) + bias) for n images. Takes the fast path where built; the _plain
/// variant takes the plain one on every target.
/// requires: ws.reserve(g, t) with t >= threads; weight is cout x cin x 3 x 3, bias has cout entries;
///           x holds n x cin x h x w floats, y n x cout x h x w.
inline void conv3x3_relu_forward(const float* x, const float* weight, const float* bias, float* y, int n,
                                 const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_forward<false>(x, weight, bias, y, nullptr, n, g, ws, threads);
}
inline void conv3x3_relu_forward_plain(const float* x, const float* weight, const float* bias, float* y, int n,
                                       const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_forward<true>(x, weight, bias, y, nullptr, n, g, ws, threads);
}

/// pooled = maxpool2x2(relu(conv3x3(x, weight) + bias)), the pool taken band by band while the
/// conv's output is in cache. `state` receives what conv3x3_relu_pool_backward (of the same path)
/// needs: the conv's full-size output, or, where pool_state_is_winners, the pool's winner masks
/// (maxpool.hpp; the full-size output is then never written).
/// requires: as conv3x3_relu_forward, with state in place of y; pooled holds n x cout x (h/2) x (w/2).
inline void conv3x3_relu_pool_forward(const float* x, const float* weight, const float* bias, float* pooled,
                                      float* state, int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws,
                                      int threads) {
  detail::conv3x3_relu_forward<false>(x, weight, bias, state, pooled, n, g, ws, threads);
}
inline void conv3x3_relu_pool_forward_plain(const float* x, const float* weight, const float* bias, float* pooled,
                                            float* state, int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws,
                                            int threads) {
  detail::conv3x3_relu_forward<true>(x, weight, bias, state, pooled, n, g, ws, threads);
}

namespace detail {
/// dy is the gradient of y, or, with Pooled, of maxpool2x2(y) (then dz is built per image in a
/// per-thread buffer that stays in cache, instead of a full-batch dy written and read back).
template <bool Plain, bool Pooled>
inline void conv3x3_relu_backward(const float* x, const float* weight, const float* y, float* dy, float* dx,
                                  float* weight_grad, float* bias_grad, int n, const Conv3x3Geometry& g,
                                  Conv3x3Workspace& ws, int threads) {
  const int band = g.max_band_rows();
  const long plane = g.plane(), wsize = long(g.cout) * g.depth();
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    float* col = ws.columns[std::size_t(tid)].data();
    float* dcol = ws.column_grads[std::size_t(tid)].data();
    float* dw = ws.weight_grads[std::size_t(tid)].data();
    float* db = ws.bias_grads[std::size_t(tid)].data();
    std::fill(dw, dw + wsize, 0.0f);
    std::fill(db, db + g.cout, 0.0f);
    const Range mine = split(n, tid, nth);
    for (long image = mine.begin; image < mine.end; ++image) {
      const float* xi = x + image * g.cin * plane;
      const float* yi = y + image * g.cout * plane;  // the conv's output (or, pooled and fast, its state)
      float* dzi = nullptr;
      if constexpr (Pooled) {  // the gradient behind the pool and the ReLU, and the bias gradient, in one pass
        const long pooled_plane = long(g.h / 2) * (g.w / 2);
        const float* dpi = dy + image * g.cout * pooled_plane;
        dzi = ws.pooled_grads[std::size_t(tid)].data();
#ifdef VGG_FAST_KERNELS
        if constexpr (!Plain) {  // from the winner masks that the forward kept
          const long winner_plane = winner_plane_words(g.h, g.w);
          const auto* winners = reinterpret_cast<const std::uint32_t*>(yi);
          if (g.cin == 1 && !dx) {  // a first layer: its weight gradient straight from the masks
            avx512::conv3x3_relu_pool_one_channel_grads(xi, winners, dpi, dw, db, g.cout, g.h, g.w,
                                                        ws.split_inputs[std::size_t(tid)].data());
            continue;
          }
          for (int co = 0; co < g.cout; ++co)
            db[co] += unpool_from_winners_plane(winners + co * winner_plane, dpi + co * pooled_plane,
                                                dzi + co * plane, g.h, g.w);
        } else
#endif
        {
          for (int co = 0; co < g.cout; ++co) {
            if constexpr (Plain)
              db[co] += maxpool2x2_backward_plane_plain(yi + co * plane, dpi + co * pooled_plane, dzi + co * plane,
                                                        g.h, g.w, true);
            else
              db[co] += maxpool2x2_backward_plane(yi + co * plane, dpi + co * pooled_plane, dzi + co * plane, g.h,
                                                  g.w, true);
          }
        }
      } else {  // ReLU mask and bias gradient in one pass
        dzi = dy + image * g.cout * plane;
        for (int co = 0; co < g.cout; ++co) {
          float* dz = dzi + co * plane;
          const float* yc = yi + co * plane;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (long p = 0; p < plane; ++p) {
            const float v = yc[p] > 0.0f ? dz[p] : 0.0f;
            dz[p] = v;
            s += v;
          }
          db[co] += s;
        }
      }
      float* dxi = dx ? dx + image * g.cin * plane : nullptr;
      if (dxi) std::fill(dxi, dxi + g.cin * plane, 0.0f);
      for (int r0 = 0; r0 < g.h; r0 += band) {
        const int r1 = std::min(g.h, r0 + band);
        const long cols = long(r1 - r0) * g.w;
        const float* dz = dzi + long(r0) * g.w;
        // dW (cout x depth) += dz (cout x cols, stride plane) * col^T
        im2col3x3(xi, g.cin, g.h, g.w, r0, r1, col);
        if constexpr (Plain)
          gemm_eigen<false, true>(g.cout, g.depth(), cols, dz, plane, col, cols, dw, g.depth(),
                                  ws.weight_plans[std::size_t(tid)]);
        else
          gemm<false, true>(g.cout, g.depth(), cols, dz, plane, col, cols, dw, g.depth(), ws.weight_plans[std::size_t(tid)]);
        if (dxi) {
          // dcol (depth x cols) = W^T (depth x cout) * dz
          GemmPlan& plan = ws.input_plans[std::size_t(tid)];
#ifdef VGG_FAST_KERNELS
          if constexpr (!Plain) {
            avx512::gemm<true>(g.depth(), cols, g.cout, weight, g.depth(), dz, plane, dcol, cols, plan.fast_a_pack(),
                               plan.fast_b_pack(), avx512::Epilogue{1.0f, false, nullptr, false});
          } else
#endif
          {
            std::fill(dcol, dcol + g.depth() * cols, 0.0f);
            gemm_eigen<true, false>(g.depth(), cols, g.cout, weight, g.depth(), dz, plane, dcol, cols, plan);
          }
          col2im3x3_add(dcol, g.cin, g.h, g.w, r0, r1, dxi);
        }
      }
    }
#pragma omp barrier
    sum_partials(ws.weight_grads, nth, wsize, weight_grad, tid);
    sum_partials(ws.bias_grads, nth, g.cout, bias_grad, tid);
  }
}

}  // namespace detail

/// Backward of y = relu(conv3x3(x) + b). Overwrites dy with dz = dy * (y > 0), writes the weight
/// and bias gradients (not accumulated across calls), and, when dx is not null, the input gradient.
/// Work items are whole images (bands of one image share input rows in col2im), each thread sums
/// its own partial weight gradient, and the partials are reduced at the end. The GEMMs take the
/// AVX-512 kernel where it is built; the _plain variant uses Eigen throughout.
/// requires: ws.reserve_backward(g, t) with t >= threads; y is the forward output for x.
inline void conv3x3_relu_backward(const float* x, const float* weight, const float* y, float* dy, float* dx,
                                  float* weight_grad, float* bias_grad, int n, const Conv3x3Geometry& g,
                                  Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<false, false>(x, weight, y, dy, dx, weight_grad, bias_grad, n, g, ws, threads);
}
inline void conv3x3_relu_backward_plain(const float* x, const float* weight, const float* y, float* dy, float* dx,
                                        float* weight_grad, float* bias_grad, int n, const Conv3x3Geometry& g,
                                        Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<true, false>(x, weight, y, dy, dx, weight_grad, bias_grad, n, g, ws, threads);
}

/// Backward of pooled = maxpool2x2(relu(conv3x3(x) + b)), given dy_pooled, the gradient of pooled
/// (n x cout x h/2 x w/2, left as it is): the same gradients as maxpool2x2_backward followed by
/// conv3x3_relu_backward, without the full-size intermediate gradient. Where pool_state_is_winners,
/// the gradient behind the pool is rebuilt from the winner masks; for a one-channel first layer
/// (no input gradient asked for), the weight gradient comes straight from them.
/// requires: ws.reserve_backward(g, t, /*pooled=*/true) with t >= threads; state is what
///           conv3x3_relu_pool_forward (the same variant, fast or _plain) wrote for x.
inline void conv3x3_relu_pool_backward(const float* x, const float* weight, const float* state, const float* dy_pooled,
                                       float* dx, float* weight_grad, float* bias_grad, int n, const Conv3x3Geometry& g,
                                       Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<false, true>(x, weight, state, const_cast<float*>(dy_pooled), dx, weight_grad,
                                             bias_grad, n, g, ws, threads);
}
inline void conv3x3_relu_pool_backward_plain(const float* x, const float* weight, const float* state,
                                             const float* dy_pooled, float* dx, float* weight_grad, float* bias_grad,
                                             int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<true, true>(x, weight, state, const_cast<float*>(dy_pooled), dx, weight_grad,
                                            bias_grad, n, g, ws, threads);
}

}  // namespace vgg::cpu
