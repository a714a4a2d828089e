#pragma once
// CPU kernel: 3x3 convolution (stride 1, padding 1) + bias + ReLU over an NCHW batch, by im2col
// and GEMM on bands of output rows, the column matrix built a slice of rows (one GEMM depth pass)
// at a time. Work items are (images, band) pairs split statically across threads; every thread
// owns its column slice and GEMM packing buffers, so no thread ever waits on another and no GEMM
// is threaded inside a threaded loop.
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
#include "vgg/cpu/conv3x3_amx.hpp"
#include "vgg/cpu/conv3x3_direct.hpp"
#include "vgg/cpu/conv3x3_one_channel.hpp"
#include "vgg/cpu/cpu_info.hpp"
#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/im2col.hpp"
#include "vgg/cpu/maxpool.hpp"
#include "vgg/cpu/parallel.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

/// Rows of the column matrix built at a time (one GEMM depth pass): the slice stays in L2 between
/// im2col and the GEMMs that read it, at any depth (a 512-channel layer's whole matrix for a
/// 392-column band is 7 MB: built whole, it went through memory; sliced, width-1 conv5-conv8 ran
/// 5-10 % of peak faster in both directions).
inline constexpr long kColumnSlice = avx512::kKc;

/// An image's output rows cut into `count` bands of nearly equal height: band i is rows
/// [begin(i), begin(i + 1)). With `even` (a fused 2x2 pool), bands hold whole pooling windows (the
/// last one also an odd last row). Balanced, because a remainder band (28 rows as 9 + 9 + 9 + 1)
/// costs a pass over the weight gradient for a few columns of work.
struct BandSplit {
  int h, count;
  bool even;
  static constexpr BandSplit of(int h, int wanted, bool even) {
    const int most = even ? std::max(1, h / 2) : std::max(1, h);
    return {h, std::clamp(wanted, 1, most), even};
  }
  constexpr int begin(int i) const {
    if (i >= count) return h;
    return even ? 2 * int(long(h / 2) * i / count) : int(long(h) * i / count);
  }
};

/// The cache budgets that size a conv's bands, derived from the caches of the CPU the program runs
/// on. They were measured on a 1 MiB-L2 AMD EPYC as 512 KiB and 2 MiB, and are kept as these
/// fractions of L2 so that a CPU with a larger L2 (the 2 MiB of the Xeon kind) gets bands to match.
struct ConvCacheBudget {
  long band_bytes = 512L << 10;         // a shallow layer's band of columns (depth x columns floats)
  long resident_gradient_bytes = 2L << 20;  // a weight gradient up to this stays cached across bands
  static constexpr ConvCacheBudget for_caches(const CacheSizes& c) { return {c.l2 / 2, 2 * c.l2}; }
};

/// This CPU's budgets, read once.
inline const ConvCacheBudget& conv_cache_budget() {
  static const ConvCacheBudget budget = ConvCacheBudget::for_caches(cpu_info().cache);
  return budget;
}

struct Conv3x3Geometry {
  int cin, cout, h, w;
  ConvCacheBudget budget = conv_cache_budget();
  constexpr long depth() const { return long(cin) * 9; }
  constexpr long slice_depth() const { return std::min(depth(), kColumnSlice); }
  constexpr long plane() const { return long(h) * w; }
  /// Row stride of a band's column buffer on the fast path: whole cache lines (16 floats), so that
  /// the GEMM's in-place loads of B never split a line (196- and 252-column bands otherwise do).
  /// Whether the AVX-512 fp32 forward takes conv3x3_direct_rows (no column matrix): 2-8 input
  /// channels, where the column matrix cost about what the GEMM did (bench_winograd direct/w8_conv2).
  constexpr bool direct_rows() const { return cin > 1 && cin <= 8; }
  static constexpr long column_stride(long cols) { return kFastKernels ? (cols + 15) / 16 * 16 : cols; }
  /// Rows per band at most: at least 256 columns, so that wide layers still give the GEMM long panels,
  /// and up to budget.band_bytes / (depth * 4 bytes) columns for shallow layers (measured); at least
  /// one row, at most the image.
  constexpr int max_band_rows() const {
    const long target_cols =
        std::clamp<long>(budget.band_bytes / (depth() * long(sizeof(float))), std::max(w, 256), 4096);
    return int(std::clamp<long>(target_cols / w, std::min(2, h), h));
  }
  /// Images side by side in one band where a whole image is under 256 columns (14x14 and smaller):
  /// enough to reach 256, so that the GEMMs' column tail (196 = 6 panels of 32 + 4) and the weight
  /// gradient's pass over its 9 MB output are paid once per group, not per image. For a batch of n
  /// on `threads`, no more than leaves every thread a group. The fast path only (the plain one keeps
  /// one image per band), and not for one input channel (kernels of their own).
  constexpr int images_per_band() const {
    return cin == 1 || max_band_rows() < h || plane() >= 256 ? 1 : int((256 + plane() - 1) / plane());
  }
  constexpr int images_per_band(int n, int threads) const {
    return std::clamp((n + threads - 1) / threads, 1, images_per_band());
  }
  /// Images per work item on a path: as above on the fast one, one on the plain one.
  constexpr int images_per_item(int n, int threads, KernelPath path) const {
    return path == KernelPath::plain ? 1 : images_per_band(n, threads);
  }
  /// uint32 words of one image's winner masks (a fused pool's state on the AVX-512 path): cout
  /// planes of winner_plane_words, rounded to whole cache lines.
  constexpr long winner_image_words() const { return cpu::winner_image_words(cout, h, w); }
  /// Columns of the widest band (the buffers' size): a balanced split (BandSplit) can exceed
  /// max_band_rows by two rows.
  constexpr long max_band_columns() const {
    return std::max({long(std::min(h, max_band_rows() + 2)) * w, long(backward_band_rows()) * w,
                     images_per_band() * plane()});
  }
  /// The forward's bands for a batch of n: as few as max_band_rows allows, more when there are fewer
  /// images than threads (so that every thread has work); `even` for a fused 2x2 pool.
  constexpr BandSplit forward_bands(int n, int threads, bool even) const {
    const int wanted = std::max((h + max_band_rows() - 1) / max_band_rows(), (threads + n - 1) / n);
    return BandSplit::of(h, wanted, even);
  }
  /// The backward's bands: each band's weight-gradient GEMM passes over the whole weight gradient,
  /// so where that is over budget.resident_gradient_bytes (2 MB with a 1 MiB L2: conv4 onwards at
  /// full width, 9 MB for 512 channels) bands are twice the forward's, at least 512 columns
  /// (measured: +3 to +10 points of peak there, -1 to -3 on layers whose gradient stays in cache).
  constexpr int backward_band_rows() const {
    if (long(cout) * depth() * long(sizeof(float)) <= budget.resident_gradient_bytes) return max_band_rows();
    return int(std::clamp<long>(std::max(2L * max_band_rows(), (512L + w - 1) / w), 1, h));
  }
  constexpr BandSplit backward_bands() const {
    return BandSplit::of(h, (h + backward_band_rows() - 1) / backward_band_rows(), false);
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

/// As sum_partials, for partials that hold the transpose of out (depth x cout for a cout x depth
/// weight gradient): out[co * depth + d] = sum over t of partials[t][d * cout + co].
inline void sum_partials_transposed(const std::vector<Buffer<float>>& partials, int threads, long cout, long depth,
                                    float* out, int tid) {
  const Range mine = split(cout * depth, tid, threads);
  for (long i = mine.begin; i < mine.end; ++i) {
    const long at = i % depth * cout + i / depth;
    float s = 0.0f;
    for (int t = 0; t < threads; ++t) s += partials[std::size_t(t)].data()[at];
    out[i] = s;
  }
}

/// Grows `buffers` to `threads` buffers of at least `size` floats each.
template <class T>
inline void reserve_per_thread(std::vector<Buffer<T>>& buffers, int threads, long size) {
  if (int(buffers.size()) < threads) buffers.resize(std::size_t(threads));
  for (int t = 0; t < threads; ++t) buffers[std::size_t(t)].reserve(std::size_t(size));
}

/// Per-thread work buffers of one convolution layer, allocated once.
struct Conv3x3Workspace {
  std::vector<Buffer<float>> columns;  // per thread: a slice (kColumnSlice rows) of a band's column matrix
  std::vector<GemmPlan> plans;
  Buffer<float> packed_weights;  // fast forward: the weights packed once per call, shared by threads
  // Fast forward, per thread: a band's output where it does not go straight to y (a fused pool
  // takes it from here while in cache; several images per band are copied out to their planes).
  std::vector<Buffer<float>> band_outputs;
  // Backward only: per-thread column gradients and partial weight/bias gradients.
  std::vector<Buffer<float>> column_grads, weight_grads, bias_grads;
  std::vector<GemmPlan> weight_plans, input_plans;
  // Backward, per thread: the gradient behind the ReLU (and the pool) of one image or band group,
  // channel rows side by side; used when dz is not taken in place from dy (fused pool, groups).
  std::vector<Buffer<float>> output_grads;
  std::vector<Buffer<float>> split_inputs;  // fused one-channel backward: input columns laid out per block
  // bf16 operands (gemm_bf16.hpp) for this layer's products on the AVX-512 path: the weights packed
  // as bf16 once per forward (in the layout of the bf16 kernel that runs: AMX's where amx_ready), and
  // every plan's bf16 packing buffers. Set by set_bf16 before a call.
  Buffer<std::uint32_t> packed_weights_bf16;
  // bf16 on AMX (conv3x3_amx.hpp), per thread:
  std::vector<Buffer<float>> amx_stages;  // the tiles' C staging block
  std::vector<Buffer<std::uint32_t>> amx_bands;  // the direct convolution's padded input band
  /// uint32s of a band for either direct convolution: the forward's (a group of images; a band is at
  /// most max_band_rows() + 3 rows, bands being whole pooling windows) or the input gradient's (one
  /// image, dz's cout channels, a backward band).
  static long amx_band_size(const Conv3x3Geometry& g) {
    return std::max(amx::direct_band_size(g.images_per_band(), g.cin, std::min(g.h, g.max_band_rows() + 4), g.w),
                    amx::direct_band_size(1, g.cout, std::min(g.h, g.backward_band_rows() + 4), g.w));
  }
  // bf16 backward (vdpbf16ps kernel), per thread: a column slice as bf16 pair rows (and one float
  // row they are rounded from) and the band's output gradient packed once as B panels, for the
  // weight gradient taken transposed (gemm_rows_a: no transpose of the columns); the partial weight
  // gradients are then depth x cout.
  std::vector<Buffer<std::uint32_t>> column_rows, gradient_panels;
  std::vector<Buffer<float>> column_stages;
  // and for the input gradient: W^T packed once per backward, dz as B panels per band (per thread).
  // On AMX, the input gradient's direct-convolution weights instead (amx::pack_direct_weights<true>).
  Buffer<std::uint32_t> packed_weights_t_bf16;
  std::vector<Buffer<std::uint32_t>> input_gradient_panels;
  bool bf16 = false;

  /// Row stride (uint32s) of column_rows for a band of `cols` columns: whole cache lines.
  static constexpr long column_row_stride(long cols) { return ((cols + 1) / 2 + 15) / 16 * 16; }

  /// requires: !on || bf16::bf16_gemm_available(), and reserve (or reserve_backward) was called.
  void set_bf16(bool on) {
    bf16 = on;
    for (auto* list : {&plans, &weight_plans, &input_plans})
      for (GemmPlan& plan : *list) plan.set_bf16(on);
  }

  void reserve_backward(const Conv3x3Geometry& g, int threads, bool pooled = false) {
    reserve(g, threads);
    const int group = kFastKernels ? g.images_per_band() : 1;  // the largest group any batch gets
    if (pooled || group > 1) reserve_per_thread(output_grads, threads, long(g.cout) * g.plane() * group);
#ifdef VGG_FAST_KERNELS
    if (pooled && g.cin == 1) reserve_per_thread(split_inputs, threads, avx512::one_channel_scratch_size(g.w));
#endif
    const long band_cols = g.max_band_columns();
    reserve_per_thread(column_grads, threads, g.slice_depth() * Conv3x3Geometry::column_stride(band_cols));
    reserve_per_thread(weight_grads, threads, g.depth() * g.cout);
    reserve_per_thread(bias_grads, threads, g.cout);
    if (int(weight_plans.size()) < threads) {
      weight_plans.resize(std::size_t(threads));
      input_plans.resize(std::size_t(threads));
    }
    for (int t = 0; t < threads; ++t) {
      weight_plans[std::size_t(t)].reserve(g.cout, g.slice_depth(), band_cols);
      input_plans[std::size_t(t)].reserve(g.slice_depth(), band_cols, g.cout);
    }
    if (kFastKernels && bf16::bf16_gemm_available() && g.cin != 1) {
      if (int(column_rows.size()) < threads) {
        column_rows.resize(std::size_t(threads));
        gradient_panels.resize(std::size_t(threads));
        input_gradient_panels.resize(std::size_t(threads));
      }
      for (int t = 0; t < threads; ++t) {
        // Room for either kernel's layout: AMX's A tiles read whole 32-row blocks, its dz^T panels
        // are padded to whole tiles.
        column_rows[std::size_t(t)].reserve(std::size_t((g.slice_depth() + 31) / 32 * 32 * column_row_stride(band_cols)));
        gradient_panels[std::size_t(t)].reserve(std::size_t(
            std::max(bf16::packed_b_panels_size(band_cols, g.cout), amx::panels_padded_size(band_cols, g.cout))));
        input_gradient_panels[std::size_t(t)].reserve(std::size_t(bf16::packed_b_panels_size(g.cout, band_cols)));
      }
      reserve_per_thread(column_stages, threads, band_cols);
      packed_weights_t_bf16.reserve(
          std::size_t(std::max(bf16::packed_a_size(g.depth(), g.cout), amx::direct_weights_size(g.cin, g.cout))));
    }
  }

  void reserve(const Conv3x3Geometry& g, int threads) {
    const long band_cols = g.max_band_columns();
    reserve_per_thread(columns, threads, g.slice_depth() * Conv3x3Geometry::column_stride(band_cols));
    if (int(plans.size()) < threads) plans.resize(std::size_t(threads));
    for (int t = 0; t < threads; ++t) plans[std::size_t(t)].reserve(g.cout, band_cols, g.slice_depth());
    if constexpr (kFastKernels) {
      packed_weights.reserve(std::size_t(avx512::packed_a_size(g.cout, g.depth())));
      reserve_per_thread(band_outputs, threads, g.cin != 1 ? long(g.cout) * band_cols : 0);
      if (bf16::bf16_gemm_available())  // in the layout of the bf16 kernel that runs here
        packed_weights_bf16.reserve(std::size_t(
            std::max(bf16::packed_a_size(g.cout, g.depth()), amx::direct_weights_size(g.cout, g.cin))));
#ifdef VGG_BF16_KERNELS
      if (g.cin != 1 && amx::amx_ready()) {
        reserve_per_thread(amx_stages, threads, amx::kStagingFloats);
        reserve_per_thread(amx_bands, threads, amx_band_size(g));
      }
#endif
    }
  }
};

/// What a fused conv + 2x2 max-pool keeps between its forward and backward passes: on the AVX-512
/// path the pool's winner masks (half a byte per pooled value, maxpool.hpp; the conv's output is
/// pooled while in cache and never stored), on the plain path the conv's full-size output.
template <KernelPath Path>
class PoolState {
 public:
  static constexpr bool keeps_winners = Path == KernelPath::avx512;
  /// ensures: room for a batch of n images of a layer of geometry g.
  void reserve(const Conv3x3Geometry& g, int n) {
    if constexpr (keeps_winners)
      winners_.reserve(std::size_t(n * g.winner_image_words()));
    else
      outputs_.reserve(std::size_t(n * g.cout * g.plane()));
  }
  std::uint32_t* winners() { return winners_.data(); }
  const std::uint32_t* winners() const { return winners_.data(); }
  float* outputs() { return outputs_.data(); }
  const float* outputs() const { return outputs_.data(); }

 private:
  Buffer<std::uint32_t> winners_;
  Buffer<float> outputs_;
};

namespace detail {
/// y = relu(conv3x3(x) + b) (without the ReLU where Relu is false), or, with Pooled, pooled =
/// maxpool2x2 of it, with the fused pass's state in y (plain path) or in winners (AVX-512 path; y is
/// then unused).
template <KernelPath Path, bool Pooled, bool Relu = true>
inline void conv3x3_relu_forward(const float* x, const float* weight, const float* bias, float* y, float* pooled,
                                 [[maybe_unused]] std::uint32_t* winners, int n, const Conv3x3Geometry& g,
                                 Conv3x3Workspace& ws, int threads) {
  constexpr bool Plain = Path == KernelPath::plain;
  static_assert(Plain || kFastKernels, "vgg::cpu: the AVX-512 kernel path is not compiled into this program");
  static_assert(Relu || !Pooled, "vgg::cpu: a fused pool follows a ReLU");
  // Work items: (group of images, band of rows); a group of several images always spans whole images.
  const int group = g.images_per_item(n, threads, Path);
  const BandSplit split_rows =
      group > 1 ? BandSplit::of(g.h, 1, false) : g.forward_bands(n, threads, /*even=*/Pooled);
  const int bands = split_rows.count;
  const long items = (n + group - 1) / group * bands, plane = g.plane();
  const int ow = g.w / 2;
  const long pooled_plane = long(g.h / 2) * ow;
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#ifdef VGG_FAST_KERNELS
    if (!Plain && g.cin != 1) {  // the weights packed once for all bands, by all threads
#ifdef VGG_BF16_KERNELS
      if (ws.bf16) {
        if (amx::amx_ready())  // per tap, for the direct convolution (conv3x3_amx.hpp)
          amx::pack_direct_weights(weight, g.cout, g.cin, ws.packed_weights_bf16.data(), tid, nth);
        else
          bf16::pack_a_whole<false>(weight, g.depth(), g.cout, g.depth(), ws.packed_weights_bf16.data(), tid, nth);
      } else
#endif
        avx512::pack_a_whole<false>(weight, g.depth(), g.cout, g.depth(), ws.packed_weights.data(), tid, nth);
#pragma omp barrier
    }
#endif
    const Range mine = split(items, tid, nth);
    float* col = ws.columns[std::size_t(tid)].data();
    GemmPlan& plan = ws.plans[std::size_t(tid)];
    for (long item = mine.begin; item < mine.end; ++item) {
      const long first = item / bands * group;  // its first image
      const int r0 = split_rows.begin(int(item % bands)), r1 = split_rows.begin(int(item % bands) + 1);
      const long cols = long(r1 - r0) * g.w;  // per image
      float* yi = y ? y + first * g.cout * plane : nullptr;  // no full-size output for fused fast pools
      float* out = yi ? yi + long(r0) * g.w : nullptr;
#ifdef VGG_FAST_KERNELS
      if constexpr (!Plain) {
        if (g.cin == 1) {  // kernels of their own (one image per item)
          const float* xi = x + first * plane;
          if constexpr (Pooled)
            avx512::conv3x3_relu_pool_one_channel(xi, weight, bias, pooled + first * g.cout * pooled_plane,
                                                  winners + first * g.winner_image_words(), g.cout, g.h, g.w, r0, r1);
          else
            avx512::conv3x3_relu_one_channel<Relu>(xi, weight, bias, yi, g.cout, g.h, g.w, r0, r1);
          continue;
        }
        // The group's images side by side: column j of image i at (i - first) * cols + j.
        const long last = std::min<long>(n, first + group), group_cols = (last - first) * cols;
        const long ld = Conv3x3Geometry::column_stride(group_cols);
        // Fused with the pool, or for several images, the output goes through a per-thread buffer
        // (pooled while in cache and never stored, or copied to each image's planes).
        const bool staged = Pooled || last - first > 1;
        float* dst = staged ? ws.band_outputs[std::size_t(tid)].data() : out;
        const long m_padded = avx512::packed_a_size(g.cout, 1);
        if (!ws.bf16 && g.direct_rows()) {  // few input channels: straight from the input rows, no columns
          for (long i = first; i < last; ++i)
            avx512::conv3x3_direct_rows(x + i * g.cin * plane, ws.packed_weights.data(), bias, Relu,
                                        dst + (i - first) * cols, staged ? group_cols : plane, g.cin, g.cout, g.h,
                                        g.w, r0, r1);
        } else
#ifdef VGG_BF16_KERNELS
        if (ws.bf16 && amx::amx_ready()) {  // a direct convolution on the tiles: no columns
          amx::HardwareTiles tiles;
          std::uint32_t* band = ws.amx_bands[std::size_t(tid)].data();
          amx::pad_input_band(x + first * g.cin * plane, long(g.cin) * plane, int(last - first), g.cin, g.h, g.w, r0, r1,
                              band);
          amx::conv3x3_direct_on(tiles, band, int(last - first), g.cin, r1 - r0, g.w, g.cout,
                                 ws.packed_weights_bf16.data(), bias, Relu, dst, staged ? group_cols : plane,
                                 ws.amx_stages[std::size_t(tid)].data());
        } else
#endif
        for (long p0 = 0; p0 < g.depth(); p0 += kColumnSlice) {  // a depth pass per column slice
          const long p1 = std::min(g.depth(), p0 + kColumnSlice);
          for (long i = first; i < last; ++i)
            im2col3x3(x + i * g.cin * plane, g.cin, g.h, g.w, r0, r1, col + (i - first) * cols, ld, p0, p1);
          const avx512::Epilogue e{1.0f, p0 > 0, p0 == 0 ? bias : nullptr, Relu && p1 == g.depth()};
#ifdef VGG_BF16_KERNELS
          if (ws.bf16) {  // pass p0 of the bf16-packed weights starts at p0 / 2 pairs per padded row
            amx::bf16_gemm<false>(g.cout, group_cols, p1 - p0, weight + p0, g.depth(), col, ld, dst,
                                  staged ? group_cols : plane, plan.bf16_a_pack(), plan.bf16_b_pack(), e,
                                  ws.packed_weights_bf16.data() + p0 / 2 * m_padded);
            continue;
          }
#endif
          avx512::gemm<false>(g.cout, group_cols, p1 - p0, weight, g.depth(), col, ld, dst, staged ? group_cols : plane,
                              plan.fast_a_pack(), plan.fast_b_pack(), e, ws.packed_weights.data() + p0 * m_padded);
        }
        for (long i = first; staged && i < last; ++i) {
          const float* src = dst + (i - first) * cols;  // image i's rows r0 .. r1, channel stride group_cols
          if constexpr (Pooled) {
            std::uint32_t* wi = winners + i * g.winner_image_words();
            const long winner_plane = winner_plane_words(g.h, g.w);
            for (int co = 0; co < g.cout; ++co)
              maxpool2x2_rows_winners(src + co * group_cols, r0, pooled + (i * g.cout + co) * pooled_plane,
                                      wi + co * winner_plane, g.w, r0 / 2, r1 / 2);
          } else {
            float* yc = y + i * g.cout * plane + long(r0) * g.w;
            for (int co = 0; co < g.cout; ++co)
              std::copy(src + co * group_cols, src + co * group_cols + cols, yc + co * plane);
          }
        }
        continue;
      } else
#endif
      {
        for (int co = 0; co < g.cout; ++co) std::fill(out + co * plane, out + co * plane + cols, bias[co]);
        for (long p0 = 0; p0 < g.depth(); p0 += kColumnSlice) {
          const long p1 = std::min(g.depth(), p0 + kColumnSlice);
          im2col3x3(x + first * g.cin * plane, g.cin, g.h, g.w, r0, r1, col, cols, p0, p1);
          gemm_eigen<false, false>(g.cout, cols, p1 - p0, weight + p0, g.depth(), col, cols, out, plane, plan);
        }
        for (int co = 0; co < g.cout && Relu; ++co) {
          float* row = out + co * plane;
          for (long i = 0; i < cols; ++i) row[i] = std::max(row[i], 0.0f);
        }
      }
      if constexpr (Pooled) {  // the band's pooled rows, while its output is in cache (r0 even)
        float* pi = pooled + first * g.cout * pooled_plane;
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

/// y = relu(conv3x3(x, weight) + bias) for n images, on the given path.
/// requires: ws.reserve(g, t) with t >= threads; weight is cout x cin x 3 x 3, bias has cout entries;
///           x holds n x cin x h x w floats, y n x cout x h x w.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_forward(const float* x, const float* weight, const float* bias, float* y, int n,
                                 const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_forward<Path, false>(x, weight, bias, y, nullptr, nullptr, n, g, ws, threads);
}

/// pooled = maxpool2x2(relu(conv3x3(x, weight) + bias)), the pool taken band by band while the
/// conv's output is in cache; `state` receives what conv3x3_relu_pool_backward needs.
/// requires: as conv3x3_relu_forward; state.reserve(g, b) with b >= n; pooled holds
///           n x cout x (h/2) x (w/2) floats.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_pool_forward(const float* x, const float* weight, const float* bias, float* pooled,
                                      PoolState<Path>& state, int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws,
                                      int threads) {
  detail::conv3x3_relu_forward<Path, true>(x, weight, bias, state.outputs(), pooled, state.winners(), n, g, ws,
                                           threads);
}

namespace detail {
/// dy is the gradient of y, or, with Pooled, of maxpool2x2(y) (then dz is built per image in a
/// per-thread buffer that stays in cache, instead of a full-batch dy written and read back).
/// Without Relu, dy is already dz (a conv before batch norm; y is not read). With Pooled and dz_out,
/// dz is also left whole in dz_out (n x cout x h x w), for an input gradient taken elsewhere.
template <KernelPath Path, bool Pooled, bool Relu = true>
inline void conv3x3_relu_backward(const float* x, const float* weight, const float* y,
                                  [[maybe_unused]] const std::uint32_t* winners,
                                  float* dy, float* dx, float* weight_grad, float* bias_grad, int n,
                                  const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads,
                                  [[maybe_unused]] float* dz_out = nullptr) {
  constexpr bool Plain = Path == KernelPath::plain;
  static_assert(Plain || kFastKernels, "vgg::cpu: the AVX-512 kernel path is not compiled into this program");
  const int group = g.images_per_item(n, threads, Path);
  const BandSplit bands = g.backward_bands();  // one band where group > 1
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
    // bf16: the weight gradient taken transposed, dW^T = col * dz^T, from the columns as bf16 rows
    // (dw is then depth x cout), on either kernel (AMX: conv3x3_amx.hpp's tile loop on them).
    bool transposed = false;
    // The input gradient's products on the same kernel, when one depth pass covers cout: W^T packed
    // once for all bands by all threads, dz packed once per band as B panels for all column slices.
    bool prepacked = false;
    // On AMX, every product of the backward on the tiles, nothing packed per product: the input
    // gradient's direct-convolution weights packed once per backward, dz^T once per band, and dz
    // padded per image and band for the input gradient's direct convolution.
    bool amx_tiles = false;
#ifdef VGG_BF16_KERNELS
    if constexpr (!Plain) {
      transposed = g.cin != 1 && ws.weight_plans[std::size_t(tid)].bf16();
      amx_tiles = transposed && amx::amx_ready();
      prepacked = transposed && !amx_tiles && dx && g.cout <= bf16::kKc;
      if (prepacked)
        bf16::pack_a_whole<true>(weight, g.depth(), g.depth(), g.cout, ws.packed_weights_t_bf16.data(), tid, nth);
      if (amx_tiles && dx)  // the input gradient's direct convolution: the kernel turned, channels swapped
        amx::pack_direct_weights<true>(weight, g.cout, g.cin, ws.packed_weights_t_bf16.data(), tid, nth);
      if (prepacked || (amx_tiles && dx)) {
#pragma omp barrier
      }
    }
#endif
    const Range mine = split(n, tid, nth);
    for (long first = mine.begin; first < mine.end; first += group) {
      // This group's images, side by side in dz's channel rows (stride dz_stride) and in the columns.
      const long last = std::min<long>(mine.end, first + group), count = last - first;
      const long dz_stride = count * plane;
      float* dz = nullptr;  // dz(co, (i - first) * plane + p) at dz + co * dz_stride + (i - first) * plane + p
#ifdef VGG_FAST_KERNELS
      if constexpr (Pooled && !Plain) {
        if (g.cin == 1 && !dx && !dz_out) {  // a first layer (one image per group): its weight gradient from the masks
          const long pooled_plane = long(g.h / 2) * (g.w / 2);
          avx512::conv3x3_relu_pool_one_channel_grads(x + first * plane, winners + first * g.winner_image_words(),
                                                      dy + first * g.cout * pooled_plane, dw, db, g.cout, g.h, g.w,
                                                      ws.split_inputs[std::size_t(tid)].data());
          continue;
        }
      }
#endif
      if constexpr (Pooled) {  // the gradient behind the pool and the ReLU, and the bias gradient, in one pass
        const long pooled_plane = long(g.h / 2) * (g.w / 2);
        // One image: its dz is written straight where it is to be left (channel stride plane).
        dz = dz_out && count == 1 ? dz_out + first * g.cout * plane : ws.output_grads[std::size_t(tid)].data();
        for (long i = first; i < last; ++i) {
          const float* dpi = dy + i * g.cout * pooled_plane;
          float* dzi = dz + (i - first) * plane;
#ifdef VGG_FAST_KERNELS
          if constexpr (!Plain) {  // from the winner masks that the forward kept
            const long winner_plane = winner_plane_words(g.h, g.w);
            const std::uint32_t* wi = winners + i * g.winner_image_words();
            for (int co = 0; co < g.cout; ++co)
              db[co] += unpool_from_winners_plane(wi + co * winner_plane, dpi + co * pooled_plane,
                                                  dzi + co * dz_stride, g.h, g.w);
          } else
#endif
          {
            const float* yi = y + i * g.cout * plane;  // the conv's output
            for (int co = 0; co < g.cout; ++co) {
              if constexpr (Plain)
                db[co] += maxpool2x2_backward_plane_plain(yi + co * plane, dpi + co * pooled_plane,
                                                          dzi + co * dz_stride, g.h, g.w, true);
              else
                db[co] += maxpool2x2_backward_plane(yi + co * plane, dpi + co * pooled_plane, dzi + co * dz_stride,
                                                    g.h, g.w, true);
            }
          }
        }
        if (dz_out && count > 1)  // a group's images side by side: each channel row copied to its plane
          for (long i = first; i < last; ++i)
            for (int co = 0; co < g.cout; ++co) {
              const float* src = dz + co * dz_stride + (i - first) * plane;
              std::copy(src, src + plane, dz_out + (i * g.cout + co) * plane);
            }
      } else {  // ReLU mask and bias gradient in one pass; dz in place in dy, and, for a group, side by side
        dz = count > 1 ? ws.output_grads[std::size_t(tid)].data() : dy + first * g.cout * plane;
        for (long i = first; i < last; ++i) {
          for (int co = 0; co < g.cout; ++co) {
            float* dyc = dy + (i * g.cout + co) * plane;
            float* dzc = dz + co * dz_stride + (i - first) * plane;  // == dyc for one image
            const float* yc = Relu ? y + (i * g.cout + co) * plane : nullptr;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (long p = 0; p < plane; ++p) {
              const float v = Relu && yc[p] <= 0.0f ? 0.0f : dyc[p];  // a NaN output passes, as in torch
              dyc[p] = v;
              dzc[p] = v;
              s += v;
            }
            db[co] += s;
          }
        }
      }
      if (dx && !amx_tiles) std::fill(dx + first * g.cin * plane, dx + last * g.cin * plane, 0.0f);
      for (int band = 0; band < bands.count; ++band) {
        const int r0 = bands.begin(band), r1 = bands.begin(band + 1);
        const long cols = long(r1 - r0) * g.w, group_cols = count * cols;  // count > 1: whole images
        const long ld = Plain ? group_cols : Conv3x3Geometry::column_stride(group_cols);
        const float* dzb = dz + long(r0) * g.w;
#ifdef VGG_BF16_KERNELS
        if (amx_tiles) {  // dz^T as the tiles read it (depth padded to whole tiles)
          amx::pack_bt_panels_padded(dzb, dz_stride, group_cols, g.cout, ws.gradient_panels[std::size_t(tid)].data());
          if (dx) {  // dx's rows of this band by a direct convolution of dz, image by image (written, not added)
            std::uint32_t* band_dz = ws.amx_bands[std::size_t(tid)].data();
            amx::HardwareTiles tiles;
            for (long i = first; i < last; ++i) {
              amx::pad_input_band(dz + (i - first) * plane, 0, 1, g.cout, g.h, g.w, r0, r1, band_dz, dz_stride);
              amx::conv3x3_direct_on(tiles, band_dz, 1, g.cout, r1 - r0, g.w, g.cin, ws.packed_weights_t_bf16.data(),
                                     nullptr, false, dx + i * g.cin * plane + long(r0) * g.w, plane,
                                     ws.amx_stages[std::size_t(tid)].data());
            }
          }
        } else if (transposed) {  // dz^T as B panels, once for all slices
          bf16::pack_bt_panels(dzb, dz_stride, group_cols, g.cout, ws.gradient_panels[std::size_t(tid)].data());
          if (prepacked)  // and dz itself, the input gradient's B
            bf16::pack_b_panels(dzb, dz_stride, g.cout, group_cols, ws.input_gradient_panels[std::size_t(tid)].data());
        }
#endif
        // A slice of the column matrix at a time, consumed while in cache by both GEMMs:
        // dW[:, d0:d1] += dz (cout x group_cols, stride dz_stride) * col^T, and
        // dcol = W[:, d0:d1]^T * dz, added back into dx.
        for (long d0 = 0; d0 < g.depth(); d0 += kColumnSlice) {
          const long d1 = std::min(g.depth(), d0 + kColumnSlice), rows = d1 - d0;
#ifdef VGG_BF16_KERNELS
          if (transposed) {  // dW^T[d0:d1, :] += col_bf16 * dz^T
            const long stride = Conv3x3Workspace::column_row_stride(group_cols);
            std::uint32_t* col_rows = ws.column_rows[std::size_t(tid)].data();
            im2col3x3_bf16_rows(x + first * g.cin * plane, long(g.cin) * plane, int(count), g.cin, g.h, g.w, r0, r1,
                                d0, d1, ws.column_stages[std::size_t(tid)].data(), col_rows, stride);
            if (amx_tiles) {
              amx::zero_row_padding(col_rows, rows, stride, group_cols);
              amx::HardwareTiles tiles;
              amx::gemm_rows_panels_on(tiles, rows, g.cout, amx::padded_pairs(group_cols), col_rows, stride,
                                       ws.gradient_panels[std::size_t(tid)].data(),
                                       bf16::kNr * amx::padded_pairs(group_cols), dw + d0 * g.cout, g.cout,
                                       ws.amx_stages[std::size_t(tid)].data(), avx512::Epilogue{1.0f, true, nullptr, false});
            } else {
              bf16::gemm_rows_a(rows, g.cout, group_cols, col_rows, stride, ws.gradient_panels[std::size_t(tid)].data(),
                                dw + d0 * g.cout, g.cout, avx512::Epilogue{1.0f, true, nullptr, false});
            }
          } else
#endif
          {
            for (long i = first; i < last; ++i)
              im2col3x3(x + i * g.cin * plane, g.cin, g.h, g.w, r0, r1, col + (i - first) * cols, ld, d0, d1);
            gemm<false, true, Path>(g.cout, rows, group_cols, dzb, dz_stride, col, ld, dw + d0, g.depth(),
                                    ws.weight_plans[std::size_t(tid)]);
          }
          if (!dx || amx_tiles) continue;
          GemmPlan& plan = ws.input_plans[std::size_t(tid)];
#ifdef VGG_FAST_KERNELS
          if constexpr (!Plain) {
#ifdef VGG_BF16_KERNELS
            if (prepacked)  // rows d0.. of the packed W^T: tile d0 of its one pass
              bf16::gemm<true>(rows, group_cols, g.cout, nullptr, 0, nullptr, 0, dcol, ld, nullptr, nullptr,
                               avx512::Epilogue{1.0f, false, nullptr, false},
                               ws.packed_weights_t_bf16.data() + d0 * ((g.cout + 1) / 2),
                               ws.input_gradient_panels[std::size_t(tid)].data());
            else if (plan.bf16())
              amx::bf16_gemm<true>(rows, group_cols, g.cout, weight + d0, g.depth(), dzb, dz_stride, dcol, ld,
                                   plan.bf16_a_pack(), plan.bf16_b_pack(),
                                   avx512::Epilogue{1.0f, false, nullptr, false});
            else
#endif
              avx512::gemm<true>(rows, group_cols, g.cout, weight + d0, g.depth(), dzb, dz_stride, dcol, ld,
                                 plan.fast_a_pack(), plan.fast_b_pack(), avx512::Epilogue{1.0f, false, nullptr, false});
          } else
#endif
          {
            std::fill(dcol, dcol + rows * ld, 0.0f);
            gemm_eigen<true, false>(rows, group_cols, g.cout, weight + d0, g.depth(), dzb, dz_stride, dcol, ld, plan);
          }
          for (long i = first; i < last; ++i)
            col2im3x3_add(dcol + (i - first) * cols, g.cin, g.h, g.w, r0, r1, dx + i * g.cin * plane, ld, d0, d1);
        }
      }
    }
#pragma omp barrier
    if (transposed)
      sum_partials_transposed(ws.weight_grads, nth, g.cout, g.depth(), weight_grad, tid);
    else
      sum_partials(ws.weight_grads, nth, wsize, weight_grad, tid);
    sum_partials(ws.bias_grads, nth, g.cout, bias_grad, tid);
  }
}

}  // namespace detail

/// y = conv3x3(x, weight) + bias, no ReLU (the conv before a batch norm); otherwise as
/// conv3x3_relu_forward.
template <KernelPath Path = fastest_path>
inline void conv3x3_forward(const float* x, const float* weight, const float* bias, float* y, int n,
                            const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_forward<Path, false, false>(x, weight, bias, y, nullptr, nullptr, n, g, ws, threads);
}

/// Backward of y = conv3x3(x) + b given dz, the gradient of y (read; with several images per work
/// item copied side by side first): the weight and bias gradients, and dx unless null.
/// requires: ws.reserve_backward(g, t) with t >= threads.
template <KernelPath Path = fastest_path>
inline void conv3x3_backward(const float* x, const float* weight, float* dz, float* dx, float* weight_grad,
                             float* bias_grad, int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<Path, false, false>(x, weight, nullptr, nullptr, dz, dx, weight_grad, bias_grad, n, g,
                                                    ws, threads);
}

/// Backward of y = relu(conv3x3(x) + b). Overwrites dy with dz = dy * (y > 0), writes the weight
/// and bias gradients (not accumulated across calls), and, when dx is not null, the input gradient.
/// Work items are whole images (bands of one image share input rows in col2im), each thread sums
/// its own partial weight gradient, and the partials are reduced at the end.
/// requires: ws.reserve_backward(g, t) with t >= threads; y is the forward output for x.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_backward(const float* x, const float* weight, const float* y, float* dy, float* dx,
                                  float* weight_grad, float* bias_grad, int n, const Conv3x3Geometry& g,
                                  Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<Path, false>(x, weight, y, nullptr, dy, dx, weight_grad, bias_grad, n, g, ws, threads);
}

/// Backward of pooled = maxpool2x2(relu(conv3x3(x) + b)), given dy_pooled, the gradient of pooled
/// (n x cout x h/2 x w/2, left as it is): the same gradients as maxpool2x2_backward followed by
/// conv3x3_relu_backward, without the full-size intermediate gradient. On the AVX-512 path the
/// gradient behind the pool is rebuilt from the winner masks; for a one-channel first layer (no
/// input gradient asked for), the weight gradient comes straight from them.
/// requires: ws.reserve_backward(g, t, /*pooled=*/true) with t >= threads; state is what
///           conv3x3_relu_pool_forward (on the same path) kept for x.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_pool_backward(const float* x, const float* weight, const PoolState<Path>& state,
                                       const float* dy_pooled, float* dx, float* weight_grad, float* bias_grad, int n,
                                       const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<Path, true>(x, weight, state.outputs(), state.winners(), const_cast<float*>(dy_pooled),
                                            dx, weight_grad, bias_grad, n, g, ws, threads);
}

/// conv3x3_relu_pool_backward's weight and bias gradients, without the input gradient: the gradient
/// behind the pool and the ReLU is left whole in dz (n x cout x h x w) instead, for an input gradient
/// taken elsewhere (by Winograd: cpu::Backend).
/// requires: as conv3x3_relu_pool_backward.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_pool_backward_dz(const float* x, const float* weight, const PoolState<Path>& state,
                                          const float* dy_pooled, float* dz, float* weight_grad, float* bias_grad,
                                          int n, const Conv3x3Geometry& g, Conv3x3Workspace& ws, int threads) {
  detail::conv3x3_relu_backward<Path, true>(x, weight, state.outputs(), state.winners(), const_cast<float*>(dy_pooled),
                                            nullptr, weight_grad, bias_grad, n, g, ws, threads, dz);
}

/// dz (n x cout x h x w, written whole) = the gradient behind a fused pool and its ReLU, rebuilt from
/// the winner masks the AVX-512 path's forward kept: for a weight and input gradient taken elsewhere
/// (Winograd's). On the plain path (no winner masks) it is never called.
template <KernelPath Path = fastest_path>
inline void conv3x3_relu_pool_unpool([[maybe_unused]] const PoolState<Path>& state,
                                     [[maybe_unused]] const float* dy_pooled, [[maybe_unused]] float* dz,
                                     [[maybe_unused]] int n, [[maybe_unused]] const Conv3x3Geometry& g,
                                     [[maybe_unused]] int threads) {
  static_assert(Path == KernelPath::avx512, "vgg::cpu::conv3x3_relu_pool_unpool reads winner masks: AVX-512 path only");
#ifdef VGG_FAST_KERNELS
  const long plane = g.plane(), pooled_plane = long(g.h / 2) * (g.w / 2), planes = long(n) * g.cout;
  const long winner_plane = winner_plane_words(g.h, g.w);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long q = 0; q < planes; ++q) {
    const long i = q / g.cout, co = q % g.cout;
    unpool_from_winners_plane(state.winners() + i * g.winner_image_words() + co * winner_plane,
                              dy_pooled + q * pooled_plane, dz + q * plane, g.h, g.w);
  }
#endif
}

}  // namespace vgg::cpu
VGG_INTRINSICS_END

