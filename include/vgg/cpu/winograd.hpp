#pragma once
// CPU kernel: 3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2016), for the wide layers, where the direct path (im2col + GEMM) is bound by its
// GEMM's multiplications. Each 2x2 output tile takes 16 multiplications per (cin, cout) pair instead
// of 36: the GEMM work falls 2.25x, for input and output transforms that cost O(cin + cout) per tile.
//
// Why F(2x2, 3x3) and not F(4x4, 3x3): F(4x4) saves 4x, not 2.25x, but its transform constants
// (up to 8 in B^T, 1/24 in G) make its float error grow ~100x over the direct path's, too much for
// training, and its 36 GEMMs of 6x6 tiles need tile chunks 2.25x larger in cache. F(2x2)'s transforms
// hold only 0, +-1 and 1/2: its results stay within a few float ulps of the direct path's.
//
// Layout: tiles are numbered over (image, tile row, tile column), ceil(h/2) x ceil(w/2) per image
// (a last tile that overhangs an odd edge reads zeros and stores only what lies inside). Threads
// take chunks of tiles; per chunk, a thread
//   1. transforms its input, V[16][cin][chunk] = B^T d B (16 transform points),
//   2. runs 16 GEMMs M[p] (cout x chunk) = U[p] (cout x cin) V[p] (cin x chunk), single-threaded
//      (in bf16 mode on bf16 operands with fp32 sums, WinogradWorkspace::bf16; transforms stay fp32),
//   3. transforms M back, y = A^T m A, + bias (+ ReLU), into its tiles of y.
// The chunk is sized so that V and M stay in L2 between the steps. U = G g G^T is computed by a call
// of its own (once per weight update; an eval loop can keep it); on the AVX-512 path it is stored
// packed as the GEMM kernel reads it.
//
// With a fused 2x2 max-pool, each output tile is one pooling window (floor rule: a tile over an odd
// edge is dropped). A training forward also writes the pool's winner masks (maxpool.hpp's layout, as
// the direct fused forward keeps them), so the direct fused backward reads them as it would its own.
// A run of tiles that covers its tile row whole stores the row's mask words; a chunk boundary that
// cuts a row leaves its words to two chunks (two threads, maybe), so such rows are cleared before
// the pass and their runs OR their bits in atomically. (Clearing all masks in the parallel pass
// needed a barrier, which cost a scheduler slice per call on a loaded machine.)
//
// The input gradient of a stride-1 pad-1 3x3 convolution is the same convolution of the output
// gradient with the filter rotated 180 degrees and in/out channels swapped: the forward runs it, with
// the filter transformed that way (winograd_transform_filter_input_grad).
//
// The weight gradient is the forward's transpose: dW = G^T [sum over tiles of (A dz A^T) . (B^T x B)] G
// (winograd_conv3x3_weight_grad), 16 products per tile and channel pair, summed by 16 GEMMs per chunk
// into per-thread sums, where the threads' sums fit half the L3 (weight_grad_fits).

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "vgg/buffer.hpp"
#include "vgg/cpu/cpu_info.hpp"
#include "vgg/cpu/gemm.hpp"
#include "vgg/cpu/kernel_path.hpp"
#include "vgg/cpu/maxpool.hpp"
#include "vgg/cpu/parallel.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

/// Transform points of F(2x2, 3x3): a 4x4 input tile.
inline constexpr int kWinogradPoints = 16;

/// Floats between one transform point's matrix (V[p] or M[p]) and the next beyond the matrix itself:
/// one cache line. Without it the 16 points' matrices lie a multiple of 4 KiB apart whenever
/// channels x chunk is a multiple of 1024, so the transforms' 16 stores (input) or loads (output)
/// per channel all fall into one set of the L1d (12 ways on both CPU kinds of the pool).
inline constexpr long kWinogradPointPad = 16;

/// A Winograd convolution's shape: cin -> cout channels on h x w images.
struct WinogradGeometry {
  int cin, cout, h, w;
  /// Tiles per chunk at most (0: from the L2 size, see max_chunk()).
  long chunk_override = 0;
  constexpr long tiles_h() const { return (h + 1) / 2; }
  constexpr long tiles_w() const { return (w + 1) / 2; }
  constexpr long tiles_per_image() const { return tiles_h() * tiles_w(); }
  /// Whether the weight gradient by Winograd (winograd_conv3x3_weight_grad) suits this layer on
  /// `threads` threads: their sums of the 16 products (16 x cout x cin floats each, read and written
  /// by every chunk's GEMMs) stay within half the L3 (a quarter of the L2 where cpuid gives no L3).
  /// Within that, every layer measured gained over the direct path's weight gradient, 512 x 512
  /// channels included (bench_winograd pooled_backward, docs/PERFORMANCE.md); beyond it, the sums
  /// would stream from memory once per chunk.
  bool weight_grad_fits(int threads) const {
    const long sums = long(threads) * kWinogradPoints * cin * cout * long(sizeof(float));
    const long l3 = cpu_info().cache.l3;
    return l3 > 0 ? sums <= l3 / 2 : sums <= std::max(cpu_info().cache.l2, 256L << 10) / 4;
  }
  /// Floats from V[p] to V[p + 1] (input_point_stride) and M[p] to M[p + 1] for rows ld floats apart.
  constexpr long input_point_stride(long ld) const { return long(cin) * ld + kWinogradPointPad; }
  constexpr long output_point_stride(long ld) const { return long(cout) * ld + kWinogradPointPad; }
  /// Tiles per chunk at most: V (16 x cin) and M (16 x cout) of a chunk fill about half an L2, in
  /// whole 32-column GEMM panels, 32 to 256. Half, because the same L2 also holds U's panels (256 KiB
  /// at 64 -> 64 channels), the input rows the transform reads and the output rows it writes: chunks
  /// that filled the whole L2 ran 10-18 % slower (bench_winograd on the Xeon, docs/PERFORMANCE.md).
  long max_chunk() const {
    if (chunk_override > 0) return (chunk_override + 31) / 32 * 32;
    const long l2 = std::max(cpu_info().cache.l2, 256L << 10);
    const long per_tile = long(kWinogradPoints) * (cin + cout) * long(sizeof(float));
    return std::clamp<long>(l2 / 2 / per_tile / 32 * 32, 32, 256);
  }
};

/// The transformed filter U[16][cout][cin] of one layer (plain path), or, on the AVX-512 path, each
/// point's U[p] packed as the GEMM kernel reads it (pack_a_whole), at p * point_stride(). Where the
/// CPU runs bf16 GEMMs (AVX-512 path), also room for a bf16 copy of it (winograd_filter_to_bf16),
/// each point in bf16::pack_a_whole's layout, for bf16 mode's Winograd: reserved with the fp32 one,
/// so that switching precision never allocates.
template <KernelPath Path = fastest_path>
class WinogradFilter {
 public:
  void reserve(int cin, int cout) {
    cin_ = cin;
    cout_ = cout;
    data_.reserve(std::size_t(kWinogradPoints * point_stride()));
    if (Path == KernelPath::avx512 && bf16::bf16_gemm_available())
      bf16_.reserve(std::size_t(kWinogradPoints * bf16_point_stride()));
  }
  long bf16_point_stride() const { return bf16::packed_a_size(cout_, cin_); }
  /// U[p] as bf16 pairs. requires: has_bf16().
  const std::uint32_t* bf16_point(int p) const { return bf16_.data() + p * bf16_point_stride(); }
  /// Whether the bf16 copy is of the current transform (a new transform drops it).
  bool has_bf16() const { return bf16_valid_; }
  void set_has_bf16(bool valid) { bf16_valid_ = valid; }
  std::uint32_t* bf16_data() { return bf16_.data(); }
  Buffer<std::uint32_t>& bf16_storage() { return bf16_; }
  long point_stride() const {
#ifdef VGG_FAST_KERNELS
    if constexpr (Path == KernelPath::avx512) return avx512::packed_a_size(cout_, cin_);
#endif
    return long(cout_) * cin_;
  }
  const float* point(int p) const { return data_.data() + p * point_stride(); }
  float* data() { return data_.data(); }
  Buffer<float>& storage() { return data_; }
  int cin() const { return cin_; }
  int cout() const { return cout_; }

 private:
  int cin_ = 0, cout_ = 0;
  Buffer<float> data_;
  Buffer<std::uint32_t> bf16_;
  bool bf16_valid_ = false;
};

namespace detail {
/// u[4][4] = G g G^T for one 3x3 filter g (row-major); G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
inline void winograd_filter_tile(const float* g, float u[16]) {
  float t[4][3];  // G g
  for (int c = 0; c < 3; ++c) {
    const float g0 = g[c], g1 = g[3 + c], g2 = g[6 + c];
    t[0][c] = g0;
    t[1][c] = 0.5f * (g0 + g1 + g2);
    t[2][c] = 0.5f * (g0 - g1 + g2);
    t[3][c] = g2;
  }
  for (int r = 0; r < 4; ++r) {  // (G g) G^T
    const float a = t[r][0], b = t[r][1], c = t[r][2];
    u[r * 4 + 0] = a;
    u[r * 4 + 1] = 0.5f * (a + b + c);
    u[r * 4 + 2] = 0.5f * (a - b + c);
    u[r * 4 + 3] = c;
  }
}

/// Where U[p](co, ci) lies in f's storage: U[p] row-major (plain path), or, on the AVX-512 path,
/// where pack_a_whole would put it (depth pass of ci, 8-row tile of co, interleaved by 8), so that
/// the transform writes the packed layout directly.
template <KernelPath Path>
inline long winograd_filter_offset(const WinogradFilter<Path>& f, int co, int ci) {
#ifdef VGG_FAST_KERNELS
  if constexpr (Path == KernelPath::avx512) {
    const long m_padded = (f.cout() + avx512::kMr - 1) / avx512::kMr * avx512::kMr;
    const long p0 = ci / avx512::kKc * avx512::kKc, kc = std::min<long>(avx512::kKc, f.cin() - p0);
    const long i0 = co / avx512::kMr * avx512::kMr;
    return p0 * m_padded + i0 * kc + (ci - p0) * avx512::kMr + (co - i0);
  }
#endif
  return long(co) * f.cin() + ci;
}

/// Fills filter f from weights read as w(co, ci, ky, kx) = weight[index(co, ci, ky, kx)].
template <KernelPath Path, class Index3x3>
inline void winograd_transform(Index3x3 index, WinogradFilter<Path>& f, int threads) {
  const int cin = f.cin(), cout = f.cout();
  const long stride = f.point_stride();
  float* u = f.data();
  f.set_has_bf16(false);
  // The packed layout's padding rows (cout not a multiple of 8) must read as zeros.
  if (Path == KernelPath::avx512 && cout % 8 != 0) std::fill(u, u + kWinogradPoints * stride, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const Range mine = split(long(cout) * cin, tid, nth);
    for (long k = mine.begin; k < mine.end; ++k) {
      const int co = int(k / cin), ci = int(k % cin);
      float g[9], t[16];
      for (int e = 0; e < 9; ++e) g[e] = index(co, ci, e / 3, e % 3);
      winograd_filter_tile(g, t);
      const long at = winograd_filter_offset(f, co, ci);
      for (int p = 0; p < kWinogradPoints; ++p) u[p * stride + at] = t[p];
    }
  }
}
}  // namespace detail

/// U = G g G^T for a layer's weights (cout x cin x 3 x 3), for winograd_conv3x3_forward.
/// requires: f.reserve(cin, cout).
template <KernelPath Path>
inline void winograd_transform_filter(const float* weight, WinogradFilter<Path>& f, int threads = 1) {
  const int cin = f.cin();
  detail::winograd_transform<Path>(
      [&](int co, int ci, int ky, int kx) { return weight[((long(co) * cin + ci) * 3 + ky) * 3 + kx]; }, f, threads);
}

/// The filter that turns the forward into the input gradient: the layer's weights (cout x cin x
/// 3 x 3) rotated 180 degrees, channels swapped (a cout -> cin convolution).
/// requires: f.reserve(cout, cin), i.e. f.cin() is the layer's cout.
template <KernelPath Path>
inline void winograd_transform_filter_input_grad(const float* weight, WinogradFilter<Path>& f, int threads = 1) {
  const int layer_cin = f.cout();  // f's output channels are the layer's input channels
  detail::winograd_transform<Path>(
      [&](int co, int ci, int ky, int kx) {  // f's (co, ci) = the layer's (ci, co)
        return weight[((long(ci) * layer_cin + co) * 3 + (2 - ky)) * 3 + (2 - kx)];
      },
      f, threads);
}

#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
namespace detail {
/// One 8-row tile of one depth pass of the fp32 kernel's packed A ([depth][8 rows], kc deep) as the
/// bf16 kernel's ([depth pair][8 rows], the odd tail's second half zero), rounded to nearest even.
VGG_TARGET_BF16 inline void winograd_tile_to_bf16(const float* src, long kc, std::uint32_t* dst) {
  // vcvtne2ps2bf16(hi, lo) over two depth pairs gives words [even q | odd q | even q+1 | odd q+1],
  // 8 rows each; pair (q, row r) wants its even word at 2r and its odd one at 2r + 1.
  alignas(64) static constexpr std::uint16_t order[32] = {0,  8,  1,  9,  2,  10, 3,  11, 4,  12, 5,
                                                          13, 6,  14, 7,  15, 16, 24, 17, 25, 18, 26,
                                                          19, 27, 20, 28, 21, 29, 22, 30, 23, 31};
  const __m512i idx = _mm512_load_si512(order);
  const long pairs = (kc + 1) / 2;
  for (long q = 0; q < pairs; q += 2) {
    const long depth = kc - 2 * q;  // depths left, from 2q
    const __mmask16 lo_lanes = depth >= 2 ? __mmask16(0xFFFF) : __mmask16(0x00FF);
    const __mmask16 hi_lanes = depth >= 4 ? __mmask16(0xFFFF) : depth == 3 ? __mmask16(0x00FF) : __mmask16(0);
    const __m512 lo = _mm512_maskz_loadu_ps(lo_lanes, src + 2 * q * 8);
    const __m512 hi = _mm512_maskz_loadu_ps(hi_lanes, src + (2 * q + 2) * 8);
    const __m512i words = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_mask_storeu_epi32(dst + q * 8, pairs - q >= 2 ? __mmask16(0xFFFF) : __mmask16(0x00FF), words);
  }
}
}  // namespace detail

/// f's bf16 copy (has_bf16() after): every point's U[p] rounded to bf16, in bf16::pack_a_whole's
/// layout, from the fp32 transform (which stays). requires: f transformed; bf16::bf16_gemm_available().
inline void winograd_filter_to_bf16(WinogradFilter<KernelPath::avx512>& f, int threads = 1) {
  static_assert(avx512::kMr == bf16::kMr && avx512::kKc == bf16::kKc && avx512::kKc % 2 == 0,
                "the fp32 and bf16 packed layouts must share tiles and passes");
  const long m_padded = (f.cout() + bf16::kMr - 1) / bf16::kMr * bf16::kMr, cin = f.cin();
  const long tiles = m_padded / bf16::kMr;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long job = 0; job < kWinogradPoints * tiles; ++job) {
    const int p = int(job / tiles);
    const long i0 = job % tiles * bf16::kMr;
    const float* src = f.point(p);
    std::uint32_t* dst = f.bf16_data() + p * f.bf16_point_stride();
    for (long p0 = 0; p0 < cin; p0 += bf16::kKc) {
      const long kc = std::min<long>(bf16::kKc, cin - p0), pairs = (kc + 1) / 2;
      detail::winograd_tile_to_bf16(src + p0 * m_padded + i0 * kc, kc, dst + p0 / 2 * m_padded + i0 * pairs);
    }
  }
  f.set_has_bf16(true);
}
#endif

/// Per-thread chunk buffers and GEMM plans, allocated once.
struct WinogradWorkspace {
  /// Whether the 16 GEMMs take bf16 operands (bf16 mode): U from the filter's bf16 copy, V rounded
  /// to bf16 as it is packed; fp32 sums, fp32 transforms. requires: the filter has_bf16().
  bool bf16 = false;
  std::vector<Buffer<float>> transformed_inputs, products;  // per thread: V and M of one chunk
  std::vector<GemmPlan> plans;
  /// Per thread, for the weight gradient (winograd_conv3x3_weight_grad): the 16 points' products
  /// summed over the thread's tiles, and the bias gradient's 16 lanes per output channel.
  std::vector<Buffer<float>> weight_products, bias_lanes;
  /// requires: reserve(g, threads) (the chunk buffers and plans the weight gradient shares).
  void reserve_weight_grad(const WinogradGeometry& g, int threads) {
    reserve(g, threads);
    if (int(weight_products.size()) < threads) {
      weight_products.resize(std::size_t(threads));
      bias_lanes.resize(std::size_t(threads));
    }
    const long side = std::max(g.cin, g.cout);
    for (int t = 0; t < threads; ++t) {
      weight_products[std::size_t(t)].reserve(std::size_t(kWinogradPoints) * g.cin * g.cout);
      bias_lanes[std::size_t(t)].reserve(std::size_t(16) * g.cout);
      plans[std::size_t(t)].reserve(side, side, g.max_chunk());
    }
  }
  void reserve(const WinogradGeometry& g, int threads) {
    const long chunk = g.max_chunk();
    if (int(transformed_inputs.size()) < threads) {
      transformed_inputs.resize(std::size_t(threads));
      products.resize(std::size_t(threads));
      plans.resize(std::size_t(threads));
    }
    for (int t = 0; t < threads; ++t) {
      transformed_inputs[std::size_t(t)].reserve(std::size_t(kWinogradPoints * g.input_point_stride(chunk)));
      products[std::size_t(t)].reserve(std::size_t(kWinogradPoints * g.output_point_stride(chunk)));
      plans[std::size_t(t)].reserve(g.cout, chunk, g.cin);
    }
  }
};

namespace detail {
/// A run of `count` tiles in one tile row: image i, tile row ty, tile columns tx0 .. tx0 + count.
/// The input transform also takes `rows` consecutive tile rows at once (each whole, so count is the
/// row's width, and tile row ty + r's tiles follow row ty + r - 1's): adjacent tile rows share two
/// input rows, whose horizontal half of the transform it then computes once.
struct TileRun {
  long image, ty, tx0, count, rows = 1;
};

/// Whether the run covers its tile row whole: it alone writes the row's winner words.
inline bool whole_row(const TileRun& run, const WinogradGeometry& g) {
  return run.tx0 == 0 && run.count == g.tiles_w();
}

/// ORs the winner bits of windows j0 .. j0 + 15 of a pooled row (window j0 + l at bits 2l, 2l + 1 of
/// top and bottom) into the row's words (`words` of them for the top row, then as many for the
/// bottom), atomically where another thread may write the same words.
inline void or_winner_bits(std::uint32_t* row, long words, long j0, std::uint32_t top, std::uint32_t bottom,
                           bool atomic) {
  const long k = j0 / 16;
  const int shift = int(2 * (j0 % 16));
  const std::uint64_t t = std::uint64_t(top) << shift, b = std::uint64_t(bottom) << shift;
  auto put = [atomic](std::uint32_t* w, std::uint32_t bits) {
    if (!bits) return;
    if (atomic)
      std::atomic_ref<std::uint32_t>(*w).fetch_or(bits, std::memory_order_relaxed);
    else
      *w |= bits;
  };
  for (long word = k; word <= k + 1 && word < words; ++word) {
    const int at = int(32 * (word - k));
    put(row + word, std::uint32_t(t >> at));
    put(row + words + word, std::uint32_t(b >> at));
  }
}

/// Clears the winner rows (every channel's) that a chunk boundary cuts mid row: runs that do not
/// cover their row whole OR their bits into them (the others store whole words).
inline void clear_cut_winner_rows(std::uint32_t* winners, const WinogradGeometry& g, long per_chunk, long total) {
  const long tw = g.tiles_w(), per_image = g.tiles_per_image(), row_words = winner_row_words(g.w);
  for (long t = per_chunk; t < total; t += per_chunk) {
    const long image = t / per_image, ty = t % per_image / tw, tx = t % per_image % tw;
    if (tx == 0 || ty >= g.h / 2) continue;  // not cut, or a last odd tile row (no pooling window)
    for (int co = 0; co < g.cout; ++co) {
      std::uint32_t* row = winners + image * winner_image_words(g.cout, g.h, g.w) +
                           co * winner_plane_words(g.h, g.w) + ty * row_words;
      std::fill(row, row + row_words, 0u);
    }
  }
}

/// V[p][ci][t0 + k] = (B^T d B)[p] for the run's tiles k, every input channel; plain scalar code.
/// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
inline void winograd_input_run_plain(const float* x, const WinogradGeometry& g, const TileRun& run, float* v,
                                     long ld, long t0) {
  const long plane = long(g.h) * g.w;
  const long channel_stride = ld, point_stride = g.input_point_stride(ld);
  for (int ci = 0; ci < g.cin; ++ci) {
    const float* xc = x + (run.image * g.cin + ci) * plane;
    for (long rk = 0; rk < run.rows * run.count; ++rk) {
      const long k = rk % run.count, y0 = 2 * (run.ty + rk / run.count) - 1, x0 = 2 * (run.tx0 + k) - 1;
      float d[4][4];
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) {
          const long yy = y0 + r, xx = x0 + c;
          d[r][c] = yy >= 0 && yy < g.h && xx >= 0 && xx < g.w ? xc[yy * g.w + xx] : 0.0f;
        }
      float t[4][4];
      for (int c = 0; c < 4; ++c) {
        t[0][c] = d[0][c] - d[2][c];
        t[1][c] = d[1][c] + d[2][c];
        t[2][c] = d[2][c] - d[1][c];
        t[3][c] = d[1][c] - d[3][c];
      }
      float* dst = v + ci * channel_stride + t0 + rk;
      for (int r = 0; r < 4; ++r) {
        dst[(r * 4 + 0) * point_stride] = t[r][0] - t[r][2];
        dst[(r * 4 + 1) * point_stride] = t[r][1] + t[r][2];
        dst[(r * 4 + 2) * point_stride] = t[r][2] - t[r][1];
        dst[(r * 4 + 3) * point_stride] = t[r][1] - t[r][3];
      }
    }
  }
}

/// y's 2x2 tiles of the run = A^T m A + bias (then ReLU), m[p] = M[p][co][t0 + k]; plain scalar code.
/// A^T = [1 1 1 0; 0 1 -1 -1].
inline void winograd_output_run_plain(const float* m, const float* bias, bool relu, const WinogradGeometry& g,
                                      const TileRun& run, float* y, long ld, long t0, float* pooled,
                                      std::uint32_t* winners) {
  const long plane = long(g.h) * g.w, point_stride = g.output_point_stride(ld);
  const long pw = g.w / 2, pooled_plane = long(g.h / 2) * pw;
  const long row_words = winner_row_words(g.w), winner_plane = winner_plane_words(g.h, g.w);
  const bool whole = whole_row(run, g);
  for (int co = 0; co < g.cout; ++co) {
    float* yc = y + (run.image * g.cout + co) * plane;
    const float b = bias ? bias[co] : 0.0f;
    std::uint32_t* winner_row = winners && 2 * run.ty + 1 < g.h ? winners +
                                    run.image * winner_image_words(g.cout, g.h, g.w) + co * winner_plane +
                                    run.ty * row_words
                                                                : nullptr;
    if (winner_row && whole) std::fill(winner_row, winner_row + row_words, 0u);  // this run's alone
    for (long k = 0; k < run.count; ++k) {
      const float* src = m + co * ld + t0 + k;
      float s[16];
      for (int p = 0; p < 16; ++p) s[p] = src[p * point_stride];
      float t[2][4];
      for (int c = 0; c < 4; ++c) {
        t[0][c] = s[c] + s[4 + c] + s[8 + c];
        t[1][c] = s[4 + c] - s[8 + c] - s[12 + c];
      }
      const long y0 = 2 * run.ty, x0 = 2 * (run.tx0 + k);
      if (pooled) {  // the tile is the pooling window; one that overhangs an odd edge is dropped (floor)
        if (y0 + 1 >= g.h || x0 + 1 >= g.w) continue;
        float* out = pooled + (run.image * g.cout + co) * pooled_plane + run.ty * pw + run.tx0 + k;
        if (winners) {  // PyTorch's winner (pool_window_winner) where the ReLU passes its gradient
          float best = 0;
          const int winner = pool_window_winner(t[0][0] + t[0][1] + t[0][2] + b, t[0][1] - t[0][2] - t[0][3] + b,
                                                t[1][0] + t[1][1] + t[1][2] + b, t[1][1] - t[1][2] - t[1][3] + b, best);
          const bool live = !(best <= 0.0f);  // NaN included
          *out = live ? best : 0.0f;
          const std::uint32_t bit = live ? 1u << (winner % 2) : 0u;
          or_winner_bits(winner_row, row_words / 2, run.tx0 + k, winner < 2 ? bit : 0u, winner < 2 ? 0u : bit,
                         !whole);
          continue;
        }
        float best = t[0][0] + t[0][1] + t[0][2];
        best = std::max(best, t[0][1] - t[0][2] - t[0][3]);
        best = std::max(best, t[1][0] + t[1][1] + t[1][2]);
        best = std::max(best, t[1][1] - t[1][2] - t[1][3]) + b;
        *out = relu ? std::max(best, 0.0f) : best;
        continue;
      }
      for (int r = 0; r < 2; ++r) {
        const float o0 = t[r][0] + t[r][1] + t[r][2] + b, o1 = t[r][1] - t[r][2] - t[r][3] + b;
        if (y0 + r >= g.h) break;
        float* row = yc + (y0 + r) * g.w;
        row[x0] = relu ? std::max(o0, 0.0f) : o0;  // max(x, 0): a NaN passes through, as in torch
        if (x0 + 1 < g.w) row[x0 + 1] = relu ? std::max(o1, 0.0f) : o1;
      }
    }
  }
}

#ifdef VGG_FAST_KERNELS
/// Lanes [lo, hi) of a 16-lane mask.
inline __mmask16 lanes_between(long lo, long hi) {
  lo = std::clamp<long>(lo, 0, 16);
  hi = std::clamp<long>(hi, 0, 16);
  return hi <= lo ? __mmask16(0) : __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/// winograd_input_run_plain, 16 tiles to a vector: each input row's 34 columns come in by four
/// masked loads (zeros outside the image), split into even and odd columns by permutes and combined
/// (d B); that half of the transform is kept for the next tile row of the run, which shares the row.
inline void winograd_input_run_avx512(const float* x, const WinogradGeometry& g, const TileRun& run, float* v,
                                      long ld, long t0) {
  const long plane = long(g.h) * g.w, point_stride = g.input_point_stride(ld);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (long k0 = 0; k0 < run.count; k0 += 16) {
    const long base = 2 * (run.tx0 + k0) - 1;  // the first input column of the 16 tiles
    const __mmask16 m0 = lanes_between(-base, g.w - base), m16 = lanes_between(-base - 16, g.w - base - 16),
                    m2 = lanes_between(-base - 2, g.w - base - 2), m18 = lanes_between(-base - 18, g.w - base - 18);
    const __mmask16 store = lanes_between(0, run.count - k0);
    for (int ci = 0; ci < g.cin; ++ci) {
      const float* xc = x + (run.image * g.cin + ci) * plane;
      // h(yy, out): input row yy of the 16 tiles times B (its four columns), zeros outside the image.
      auto h = [&](long yy, __m512 out[4]) {
        if (yy < 0 || yy >= g.h) {
          for (int j = 0; j < 4; ++j) out[j] = _mm512_setzero_ps();
          return;
        }
        const float* row = xc + yy * g.w + base;  // masked lanes are never read
        const __m512 a = _mm512_maskz_loadu_ps(m0, row), b = _mm512_maskz_loadu_ps(m16, row + 16);
        const __m512 a2 = _mm512_maskz_loadu_ps(m2, row + 2), b2 = _mm512_maskz_loadu_ps(m18, row + 18);
        const __m512 c0 = _mm512_permutex2var_ps(a, even, b), c1 = _mm512_permutex2var_ps(a, odd, b);
        const __m512 c2 = _mm512_permutex2var_ps(a2, even, b2), c3 = _mm512_permutex2var_ps(a2, odd, b2);
        out[0] = _mm512_sub_ps(c0, c2);
        out[1] = _mm512_add_ps(c1, c2);
        out[2] = _mm512_sub_ps(c2, c1);
        out[3] = _mm512_sub_ps(c1, c3);
      };
      __m512 h0[4], h1[4], h2[4], h3[4];  // rows 0-3 of the current tile row
      h(2 * run.ty - 1, h0);
      h(2 * run.ty, h1);
      float* dst = v + ci * ld + t0 + k0;
      for (long r = 0; r < run.rows; ++r, dst += run.count) {
        h(2 * (run.ty + r) + 1, h2);
        h(2 * (run.ty + r) + 2, h3);
        float* d = dst;
        for (int j = 0; j < 4; ++j, d += point_stride) _mm512_mask_storeu_ps(d, store, _mm512_sub_ps(h0[j], h2[j]));
        for (int j = 0; j < 4; ++j, d += point_stride) _mm512_mask_storeu_ps(d, store, _mm512_add_ps(h1[j], h2[j]));
        for (int j = 0; j < 4; ++j, d += point_stride) _mm512_mask_storeu_ps(d, store, _mm512_sub_ps(h2[j], h1[j]));
        for (int j = 0; j < 4; ++j, d += point_stride) _mm512_mask_storeu_ps(d, store, _mm512_sub_ps(h1[j], h3[j]));
        for (int j = 0; j < 4; ++j) {
          h0[j] = h2[j];
          h1[j] = h3[j];
        }
      }
    }
  }
}

/// winograd_output_run_plain, 16 tiles to a vector: a tile row's two output columns interleaved by
/// permutes into 32 output columns, stored masked at the image's right edge.
inline void winograd_output_run_avx512(const float* m, const float* bias, bool relu, const WinogradGeometry& g,
                                       const TileRun& run, float* y, long ld, long t0, float* pooled,
                                       std::uint32_t* winners) {
  const long plane = long(g.h) * g.w, point_stride = g.output_point_stride(ld);
  const long pw = g.w / 2, pooled_plane = long(g.h / 2) * pw;
  const long row_words = winner_row_words(g.w), winner_plane = winner_plane_words(g.h, g.w);
  if (pooled && 2 * run.ty + 1 >= g.h) return;  // an odd last row of tiles has no pooling window
  const bool whole = whole_row(run, g);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 zero = _mm512_setzero_ps();
  for (long k0 = 0; k0 < run.count; k0 += 16) {
    const long x0 = 2 * (run.tx0 + k0);
    const long outputs = std::min(2 * (run.count - k0), g.w - x0);  // columns stored
    const __mmask16 load = lanes_between(0, run.count - k0);
    const __mmask16 s0 = lanes_between(0, outputs), s1 = lanes_between(0, outputs - 16);
    const __mmask16 windows = lanes_between(0, std::min(run.count - k0, pw - (run.tx0 + k0)));
    for (int co = 0; co < g.cout; ++co) {
      float* yc = y + (run.image * g.cout + co) * plane;
      const __m512 b = _mm512_set1_ps(bias ? bias[co] : 0.0f);
      const float* src = m + co * ld + t0 + k0;
      __m512 t[2][4];
      for (int c = 0; c < 4; ++c) {
        const __m512 s4 = _mm512_maskz_loadu_ps(load, src + (4 + c) * point_stride);
        const __m512 s8 = _mm512_maskz_loadu_ps(load, src + (8 + c) * point_stride);
        t[0][c] = _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(load, src + c * point_stride), s4), s8);
        t[1][c] = _mm512_sub_ps(_mm512_sub_ps(s4, s8), _mm512_maskz_loadu_ps(load, src + (12 + c) * point_stride));
      }
      if (pooled && winners) {  // and the winner masks, for a backward (ReLU assumed)
        const __m512 a = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(t[0][0], t[0][1]), t[0][2]), b);
        const __m512 bb = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(t[0][1], t[0][2]), t[0][3]), b);
        const __m512 c = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(t[1][0], t[1][1]), t[1][2]), b);
        const __m512 d = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(t[1][1], t[1][2]), t[1][3]), b);
        std::uint32_t top = 0, bottom = 0;
        const __m512 best = avx512::relu_pool_winner_bits(a, bb, c, d, windows, top, bottom);
        _mm512_mask_storeu_ps(pooled + (run.image * g.cout + co) * pooled_plane + run.ty * pw + run.tx0 + k0, windows,
                              best);
        std::uint32_t* row = winners + run.image * winner_image_words(g.cout, g.h, g.w) + co * winner_plane +
                             run.ty * row_words;
        if (whole) {  // the 16 windows from k0 are one word's (past the last window: none)
          if (k0 < pw) {
            row[k0 / 16] = top;
            row[row_words / 2 + k0 / 16] = bottom;
          }
        } else {
          or_winner_bits(row, row_words / 2, run.tx0 + k0, top, bottom, /*atomic=*/true);
        }
        continue;
      }
      if (pooled) {  // the tile is the pooling window (those over an odd right edge are dropped: floor)
        const __m512 r0 = _mm512_max_ps(_mm512_add_ps(_mm512_add_ps(t[0][0], t[0][1]), t[0][2]),
                                        _mm512_sub_ps(_mm512_sub_ps(t[0][1], t[0][2]), t[0][3]));
        const __m512 r1 = _mm512_max_ps(_mm512_add_ps(_mm512_add_ps(t[1][0], t[1][1]), t[1][2]),
                                        _mm512_sub_ps(_mm512_sub_ps(t[1][1], t[1][2]), t[1][3]));
        __m512 best = _mm512_add_ps(_mm512_max_ps(r0, r1), b);
        if (relu) best = _mm512_max_ps(zero, best);
        _mm512_mask_storeu_ps(pooled + (run.image * g.cout + co) * pooled_plane + run.ty * pw + run.tx0 + k0, windows,
                              best);
        continue;
      }
      for (int r = 0; r < 2; ++r) {
        if (2 * run.ty + r >= g.h) break;
        __m512 o0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(t[r][0], t[r][1]), t[r][2]), b);
        __m512 o1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(t[r][1], t[r][2]), t[r][3]), b);
        if (relu) {  // zero first: a NaN passes, as in torch's ReLU
          o0 = _mm512_max_ps(zero, o0);
          o1 = _mm512_max_ps(zero, o1);
        }
        float* row = yc + (2 * run.ty + r) * g.w + x0;
        _mm512_mask_storeu_ps(row, s0, _mm512_permutex2var_ps(o0, lo, o1));
        _mm512_mask_storeu_ps(row + 16, s1, _mm512_permutex2var_ps(o0, hi, o1));
      }
    }
  }
}
#endif

/// Z[p][co][t0 + k] = (A dz A^T)[p] for the run's tiles k, every output channel, where dz is the
/// tile's 2x2 of the output gradient (zeros outside the image) and A = [1 0; 1 1; 1 -1; 0 -1]: the
/// transform of the weight gradient's second operand. With y, dz = dy where y > 0 (the ReLU's
/// gradient; a NaN output passes, as in torch), written back into dy. bias_lanes[co * 16 + l] gathers
/// the sum of dz (plain path: lane 0 only). Plain scalar code.
inline void winograd_gradient_run_plain(float* dy, const float* y, const WinogradGeometry& g, const TileRun& run,
                                        float* z, long ld, long t0, float* bias_lanes) {
  const long plane = long(g.h) * g.w, point_stride = g.output_point_stride(ld);
  for (int co = 0; co < g.cout; ++co) {
    float* dyc = dy + (run.image * g.cout + co) * plane;
    const float* yc = y ? y + (run.image * g.cout + co) * plane : nullptr;
    for (long k = 0; k < run.count; ++k) {
      const long y0 = 2 * run.ty, x0 = 2 * (run.tx0 + k);
      float d[2][2];
      for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) {
          const long yy = y0 + r, xx = x0 + c;
          if (yy >= g.h || xx >= g.w) {
            d[r][c] = 0.0f;
            continue;
          }
          float& v = dyc[yy * g.w + xx];
          if (yc && yc[yy * g.w + xx] <= 0.0f) v = 0.0f;
          d[r][c] = v;
        }
      bias_lanes[co * 16] += d[0][0] + d[0][1] + d[1][0] + d[1][1];
      const float t[4][2] = {{d[0][0], d[0][1]},
                             {d[0][0] + d[1][0], d[0][1] + d[1][1]},
                             {d[0][0] - d[1][0], d[0][1] - d[1][1]},
                             {-d[1][0], -d[1][1]}};
      float* dst = z + co * ld + t0 + k;
      for (int i = 0; i < 4; ++i) {
        dst[(i * 4 + 0) * point_stride] = t[i][0];
        dst[(i * 4 + 1) * point_stride] = t[i][0] + t[i][1];
        dst[(i * 4 + 2) * point_stride] = t[i][0] - t[i][1];
        dst[(i * 4 + 3) * point_stride] = -t[i][1];
      }
    }
  }
}

#ifdef VGG_FAST_KERNELS
/// winograd_gradient_run_plain, 16 tiles to a vector: a tile row's 32 gradient columns split into
/// even and odd columns by permutes; every lane of bias_lanes gathers.
inline void winograd_gradient_run_avx512(float* dy, const float* y, const WinogradGeometry& g, const TileRun& run,
                                         float* z, long ld, long t0, float* bias_lanes) {
  const long plane = long(g.h) * g.w, point_stride = g.output_point_stride(ld);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 zero = _mm512_setzero_ps();
  const bool second_row = 2 * run.ty + 1 < g.h;
  for (long k0 = 0; k0 < run.count; k0 += 16) {
    const long x0 = 2 * (run.tx0 + k0);
    const long columns = std::min(2 * (run.count - k0), g.w - x0);  // inside the image and the run
    const __mmask16 lo = lanes_between(0, columns), hi = lanes_between(0, columns - 16);
    const __mmask16 store = lanes_between(0, run.count - k0);
    for (int co = 0; co < g.cout; ++co) {
      float* row0 = dy + (run.image * g.cout + co) * plane + 2 * run.ty * g.w + x0;
      const float* yrow0 = y ? y + (run.image * g.cout + co) * plane + 2 * run.ty * g.w + x0 : nullptr;
      __m512 e[2], o[2];  // e[r]: the tiles' even columns of row r, o[r]: their odd columns
      for (int r = 0; r < 2; ++r) {
        if (r == 1 && !second_row) {
          e[1] = o[1] = zero;
          break;
        }
        float* row = row0 + r * g.w;
        __m512 a = _mm512_maskz_loadu_ps(lo, row), b = _mm512_maskz_loadu_ps(hi, row + 16);
        if (yrow0) {  // dz = dy where y > 0 (not where y <= 0: a NaN passes), stored back
          const float* yr = yrow0 + r * g.w;
          const __mmask16 pass_lo = _mm512_mask_cmp_ps_mask(lo, _mm512_maskz_loadu_ps(lo, yr), zero, _CMP_NLE_UQ);
          const __mmask16 pass_hi =
              _mm512_mask_cmp_ps_mask(hi, _mm512_maskz_loadu_ps(hi, yr + 16), zero, _CMP_NLE_UQ);
          a = _mm512_maskz_mov_ps(pass_lo, a);
          b = _mm512_maskz_mov_ps(pass_hi, b);
          _mm512_mask_storeu_ps(row, lo, a);
          _mm512_mask_storeu_ps(row + 16, hi, b);
        }
        e[r] = _mm512_permutex2var_ps(a, even, b);
        o[r] = _mm512_permutex2var_ps(a, odd, b);
      }
      float* lanes = bias_lanes + co * 16;
      _mm512_storeu_ps(lanes, _mm512_add_ps(_mm512_loadu_ps(lanes),
                                            _mm512_add_ps(_mm512_add_ps(e[0], o[0]), _mm512_add_ps(e[1], o[1]))));
      const __m512 t[4][2] = {{e[0], o[0]},
                              {_mm512_add_ps(e[0], e[1]), _mm512_add_ps(o[0], o[1])},
                              {_mm512_sub_ps(e[0], e[1]), _mm512_sub_ps(o[0], o[1])},
                              {_mm512_sub_ps(zero, e[1]), _mm512_sub_ps(zero, o[1])}};
      float* dst = z + co * ld + t0 + k0;
      for (int i = 0; i < 4; ++i) {
        _mm512_mask_storeu_ps(dst + (i * 4 + 0) * point_stride, store, t[i][0]);
        _mm512_mask_storeu_ps(dst + (i * 4 + 1) * point_stride, store, _mm512_add_ps(t[i][0], t[i][1]));
        _mm512_mask_storeu_ps(dst + (i * 4 + 2) * point_stride, store, _mm512_sub_ps(t[i][0], t[i][1]));
        _mm512_mask_storeu_ps(dst + (i * 4 + 3) * point_stride, store, _mm512_sub_ps(zero, t[i][1]));
      }
    }
  }
}
#endif

/// The 3x3 weight gradient from the 16 summed products m[p] (p = 4i + j): G^T m G, row-major.
inline void winograd_weight_grad_tile(const float m[16], float* dw) {
  float s[3][4];  // G^T m
  for (int j = 0; j < 4; ++j) {
    s[0][j] = m[j] + 0.5f * (m[4 + j] + m[8 + j]);
    s[1][j] = 0.5f * (m[4 + j] - m[8 + j]);
    s[2][j] = 0.5f * (m[4 + j] + m[8 + j]) + m[12 + j];
  }
  for (int a = 0; a < 3; ++a) {  // (G^T m) G
    dw[a * 3 + 0] = s[a][0] + 0.5f * (s[a][1] + s[a][2]);
    dw[a * 3 + 1] = 0.5f * (s[a][1] - s[a][2]);
    dw[a * 3 + 2] = 0.5f * (s[a][1] + s[a][2]) + s[a][3];
  }
}

/// How a pass splits its `total` tiles: `count` chunks of `per_chunk` tiles (the last may be short),
/// as few as max_chunk allows, a multiple of the thread count (balanced), equal in size, whole
/// vectors of 16 tiles. per_chunk is also the row stride of the chunk's V, M and Z matrices.
struct ChunkSplit {
  long per_chunk, count;
};
inline ChunkSplit split_chunks(long total, long max_chunk, int threads) {
  long chunks = std::max(1L, (total + max_chunk - 1) / max_chunk);
  chunks = (chunks + threads - 1) / threads * threads;
  const long per_chunk = std::max(16L, std::min(max_chunk, ((total + chunks - 1) / chunks + 15) / 16 * 16));
  return {per_chunk, (total + per_chunk - 1) / per_chunk};
}

/// Calls f(run, t0) for the tile runs of tiles [begin, end), t0 counting from begin. With
/// whole_rows, consecutive whole tile rows of one image come as one run of several rows.
template <class F>
inline void for_each_tile_run(const WinogradGeometry& g, long begin, long end, F f, bool whole_rows = false) {
  const long tw = g.tiles_w(), per_image = g.tiles_per_image();
  for (long t = begin; t < end;) {
    const long image = t / per_image, in_image = t % per_image, ty = in_image / tw, tx = in_image % tw;
    const long count = std::min(end - t, tw - tx);
    const long rows = whole_rows && tx == 0 && count == tw ? std::min((end - t) / tw, g.tiles_h() - ty) : 1;
    f(TileRun{image, ty, tx, count, rows}, t - begin);
    t += rows * count;
  }
}

/// V = the input transform of tiles [begin, end) (V[p][ci][t - begin]), whole tile rows taken
/// together so that the AVX-512 path computes each shared input row once.
template <KernelPath Path>
inline void winograd_input_chunk(const float* x, const WinogradGeometry& g, long begin, long end, float* v, long ld) {
  for_each_tile_run(
      g, begin, end,
      [&](const TileRun& run, long t0) {
#ifdef VGG_FAST_KERNELS
        if constexpr (Path == KernelPath::avx512) {
          winograd_input_run_avx512(x, g, run, v, ld, t0);
          return;
        }
#endif
        winograd_input_run_plain(x, g, run, v, ld, t0);
      },
      /*whole_rows=*/true);
}
}  // namespace detail

/// y = conv3x3(x) + bias (then ReLU where relu) for n images, NCHW, by F(2x2, 3x3) Winograd, with
/// filter u from winograd_transform_filter (or _input_grad; bias may be null). With `pooled`, y is
/// not written: pooled (n x cout x h/2 x w/2) = maxpool2x2 of it instead, each output tile being
/// one pooling window; with winners too (a training forward, relu true), the pool's winner masks as
/// the direct fused forward keeps them (maxpool.hpp's layout, winner_image_words(cout, h, w) per
/// image), which conv3x3_relu_pool_backward reads. Without winners the pooled values are the same
/// up to NaN handling (an eval forward: nothing is kept for a backward pass).
/// requires: ws.reserve(g, t) with t >= threads; u.reserve(g.cin, g.cout) and transformed.
template <KernelPath Path = fastest_path>
inline void winograd_conv3x3_forward(const float* x, const WinogradFilter<Path>& u, const float* bias, float* y,
                                     int n, const WinogradGeometry& g, WinogradWorkspace& ws, int threads,
                                     bool relu = false, float* pooled = nullptr, std::uint32_t* winners = nullptr) {
  static_assert(Path == KernelPath::plain || kFastKernels,
                "vgg::cpu: the AVX-512 kernel path is not compiled into this program");
  const long total = long(n) * g.tiles_per_image();
  if (total == 0) return;
  // (Plain variables, not a structured binding: clang 14 cannot name one inside an OpenMP region.)
  const detail::ChunkSplit split_tiles = detail::split_chunks(total, g.max_chunk(), threads);
  const long per_chunk = split_tiles.per_chunk, chunks = split_tiles.count;
  const long ld = per_chunk;  // row stride of V's and M's matrices
  if (winners) detail::clear_cut_winner_rows(winners, g, per_chunk, total);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    float* v = ws.transformed_inputs[std::size_t(tid)].data();
    float* m = ws.products[std::size_t(tid)].data();
    GemmPlan& plan = ws.plans[std::size_t(tid)];
    const Range mine = split(chunks, tid, nth);
    for (long c = mine.begin; c < mine.end; ++c) {
      const long begin = c * per_chunk, end = std::min(total, begin + per_chunk), cols = end - begin;
      detail::winograd_input_chunk<Path>(x, g, begin, end, v, ld);
      for (int p = 0; p < kWinogradPoints; ++p) {
        const float* vp = v + p * g.input_point_stride(ld);
        float* mp = m + p * g.output_point_stride(ld);
#ifdef VGG_FAST_KERNELS
        if constexpr (Path == KernelPath::avx512) {
#ifdef VGG_BF16_KERNELS
          if (ws.bf16) {
            bf16::gemm<false>(g.cout, cols, g.cin, nullptr, g.cin, vp, ld, mp, ld, nullptr, plan.bf16_b_pack(),
                              avx512::Epilogue{1.0f, false, nullptr, false}, u.bf16_point(p));
            continue;
          }
#endif
          avx512::gemm<false>(g.cout, cols, g.cin, nullptr, g.cin, vp, ld, mp, ld, plan.fast_a_pack(),
                              plan.fast_b_pack(), avx512::Epilogue{1.0f, false, nullptr, false}, u.point(p));
          continue;
        }
#endif
        for (int co = 0; co < g.cout; ++co) std::fill(mp + co * ld, mp + co * ld + cols, 0.0f);
        gemm_eigen<false, false>(g.cout, cols, g.cin, u.point(p), g.cin, vp, ld, mp, ld, plan);
      }
      detail::for_each_tile_run(g, begin, end, [&](const detail::TileRun& run, long t0) {
#ifdef VGG_FAST_KERNELS
        if constexpr (Path == KernelPath::avx512) {
          detail::winograd_output_run_avx512(m, bias, relu, g, run, y, ld, t0, pooled, winners);
          return;
        }
#endif
        detail::winograd_output_run_plain(m, bias, relu, g, run, y, ld, t0, pooled, winners);
      });
    }
  }
}

/// The weight and bias gradients of a layer of geometry g (cin -> cout) by F(2x2, 3x3) in its
/// transposed form: for y = A^T [(G w G^T) . (B^T x B)] A per tile, dL/dw = G^T [sum over tiles of
/// (A dz A^T) . (B^T x B)] G. Per chunk of tiles a thread transforms x (as the forward does) and dz,
/// and adds 16 products (cout x chunk) x (chunk x cin) into its own sums; the threads' sums are
/// added and transformed at the end. 16 multiplications per tile and channel pair instead of 36,
/// and no column matrix. weight_grad (cout x cin x 3 x 3) and bias_grad (cout; may be null) are
/// written, not added to. With y (the layer's ReLU output), dz = dy where y > 0 is computed on the
/// way and left in dy, for the input gradient; without, dy is dz already (a pooled layer's, rebuilt
/// from the pool's winners).
/// requires: ws.reserve_weight_grad(g, t) with t >= threads; x is n x cin x h x w, dy n x cout x h x w.
template <KernelPath Path = fastest_path>
inline void winograd_conv3x3_weight_grad(const float* x, const float* y, float* dy, float* weight_grad,
                                         float* bias_grad, int n, const WinogradGeometry& g, WinogradWorkspace& ws,
                                         int threads) {
  static_assert(Path == KernelPath::plain || kFastKernels,
                "vgg::cpu: the AVX-512 kernel path is not compiled into this program");
  const long total = long(n) * g.tiles_per_image();
  const long pairs = long(g.cin) * g.cout, products = kWinogradPoints * pairs;
  // Chunks as the forward takes them (every chunk's operands in half the L2).
  const detail::ChunkSplit split_tiles = detail::split_chunks(total, g.max_chunk(), threads);
  const long per_chunk = split_tiles.per_chunk, chunks = split_tiles.count;
  const long ld = per_chunk;
  // The products' orientation: the wider operand along the kernel's 32-column side.
  const bool cout_rows = g.cin >= g.cout;
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    float* v = ws.transformed_inputs[std::size_t(tid)].data();
    float* z = ws.products[std::size_t(tid)].data();
    float* sums = ws.weight_products[std::size_t(tid)].data();
    float* lanes = ws.bias_lanes[std::size_t(tid)].data();
    GemmPlan& plan = ws.plans[std::size_t(tid)];
    std::fill(sums, sums + products, 0.0f);
    std::fill(lanes, lanes + 16L * g.cout, 0.0f);
    const Range mine = split(chunks, tid, nth);
    for (long c = mine.begin; c < mine.end; ++c) {
      const long begin = c * per_chunk, end = std::min(total, begin + per_chunk), cols = end - begin;
      detail::winograd_input_chunk<Path>(x, g, begin, end, v, ld);
      detail::for_each_tile_run(g, begin, end, [&](const detail::TileRun& run, long t0) {
#ifdef VGG_FAST_KERNELS
        if constexpr (Path == KernelPath::avx512) {
          detail::winograd_gradient_run_avx512(dy, y, g, run, z, ld, t0, lanes);
          return;
        }
#endif
        detail::winograd_gradient_run_plain(dy, y, g, run, z, ld, t0, lanes);
      });
      for (int p = 0; p < kWinogradPoints; ++p) {
        const float* vp = v + p * g.input_point_stride(ld);
        const float* zp = z + p * g.output_point_stride(ld);
        float* sp = sums + p * pairs;
        if (cout_rows)  // S[p] (cout x cin) += Z[p] V[p]^T
          gemm<false, true, Path>(g.cout, g.cin, cols, zp, ld, vp, ld, sp, g.cin, plan);
        else  // S[p] (cin x cout) += V[p] Z[p]^T
          gemm<false, true, Path>(g.cin, g.cout, cols, vp, ld, zp, ld, sp, g.cout, plan);
      }
    }
#pragma omp barrier
    // Every thread's sums added in thread order (the same result for any schedule), transformed.
    const Range my_pairs = split(pairs, tid, nth);
    for (long q = my_pairs.begin; q < my_pairs.end; ++q) {
      const long co = q / g.cin, ci = q % g.cin, at = cout_rows ? co * g.cin + ci : ci * g.cout + co;
      float m[kWinogradPoints] = {};
      for (int t = 0; t < nth; ++t) {
        const float* st = ws.weight_products[std::size_t(t)].data();
        for (int p = 0; p < kWinogradPoints; ++p) m[p] += st[p * pairs + at];
      }
      detail::winograd_weight_grad_tile(m, weight_grad + q * 9);
    }
    if (bias_grad) {
      const Range my_channels = split(g.cout, tid, nth);
      for (long co = my_channels.begin; co < my_channels.end; ++co) {
        float b = 0.0f;
        for (int t = 0; t < nth; ++t) {
          const float* lt = ws.bias_lanes[std::size_t(t)].data() + co * 16;
          for (int l = 0; l < 16; ++l) b += lt[l];
        }
        bias_grad[co] = b;
      }
    }
  }
}

/// The geometry of the forward that computes a layer's input gradient: cout -> cin channels.
inline WinogradGeometry winograd_input_grad_geometry(const WinogradGeometry& g) {
  return WinogradGeometry{g.cout, g.cin, g.h, g.w, g.chunk_override};
}

/// dx (n x cin x h x w) from dz (n x cout x h x w) for a layer of geometry g (cin -> cout).
/// requires: u.reserve(g.cout, g.cin) and winograd_transform_filter_input_grad(weight, u);
///           ws.reserve(winograd_input_grad_geometry(g), t) with t >= threads.
template <KernelPath Path = fastest_path>
inline void winograd_conv3x3_input_grad(const float* dz, const WinogradFilter<Path>& u, float* dx, int n,
                                        const WinogradGeometry& g, WinogradWorkspace& ws, int threads) {
  winograd_conv3x3_forward<Path>(dz, u, nullptr, dx, n, winograd_input_grad_geometry(g), ws, threads, false);
}

}  // namespace vgg::cpu
VGG_INTRINSICS_END
