#pragma once
// A 3x3 convolution's forward product on AMX tiles (stride 1, padding 1), its columns made panel by
// panel: for each 32 output columns, the column matrix's depth x 32 block is gathered from the input
// straight into a bf16 B panel (through an fp32 stage of one depth pass, in L1), and every 32-channel
// block of the output is taken from it with the sums kept in the tiles over the whole depth.
//
// Why not im2col then gemm_amx.hpp's GEMM: there, a band's column matrix (up to 4 MiB of fp32) is
// written whole, then read again to be packed as bf16 panels, and each 256-deep pass stores and
// re-reads C. With AMX the products themselves are cheap (a layer of 8-64 output channels uses each
// column 8-64 times), so those passes over memory were most of the layer's time (perf, Xeon family 6
// model 207: im2col copies and B packing 30 %, the tiles 13 % of a width/8 bf16 training step).
//
// Written over a tile-operations type like gemm_on (HardwareTiles, or EmulatedTiles to test the
// gathering, packing and loop on any machine with avx512_bf16).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vgg/cpu/gemm_amx.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu::amx {

/// Depth pairs of a conv's whole depth, padded to whole tiles.
constexpr Index conv_depth_pairs(Index depth) { return padded_pairs(depth); }
/// uint32s of a conv's weights packed for conv3x3_forward_on: 32-row blocks of all depth pairs.
constexpr Index conv_packed_weights_size(Index cout, Index depth) {
  return (cout + kBlock - 1) / kBlock * kBlock * conv_depth_pairs(depth);
}
/// uint32s of a thread's B panel (all depth pairs x 32 columns).
constexpr Index conv_panel_size(Index depth) { return conv_depth_pairs(depth) * bf16::kNr; }
/// floats of a thread's stage (one depth pass x 32 columns) and C staging block, side by side.
inline constexpr Index kConvStageFloats = kKc * bf16::kNr + kStagingFloats;

#ifdef VGG_BF16_KERNELS
/// The weights (cout x depth, row-major: a conv's [cout][cin][3][3]) packed for conv3x3_forward_on:
/// block i0 of 32 rows at dst + i0 * conv_depth_pairs(depth), each row its depth pairs (zero beyond).
/// With parts > 1, only part `part` of the blocks, so that threads can pack it together.
inline void pack_conv_weights(const float* weight, Index cout, Index depth, std::uint32_t* dst, int part = 0,
                              int parts = 1) {
  for (Index i0 = Index(part) * kBlock; i0 < cout; i0 += Index(parts) * kBlock)
    pack_a<false>(weight, depth, i0, int(std::min<Index>(kBlock, cout - i0)), 0, depth,
                  dst + i0 * conv_depth_pairs(depth));
}

/// stage[d - p0][c] (32 floats a row) = column j0 + c of the column matrix at depth d, for d in
/// [p0, p1), c < nr; 0 for c >= nr. Columns are images side by side, `cols` each (rows [r0, r0 +
/// cols / w) of w pixels); image i at x + i * image_stride; depth d = ci * 9 + ky * 3 + kx reads
/// pixel (r + ky - 1, x + kx - 1) of channel ci, 0 outside the image.
VGG_TARGET_BF16 inline void gather_columns(const float* x, Index image_stride, int h, int w, int r0, Index cols, Index j0,
                                           int nr, Index p0, Index p1, float* stage) {
  const Index plane = Index(h) * w;
  int jj = 0;
  while (jj < nr) {  // runs of columns within one output row
    const Index j = j0 + jj, p = j % cols;
    const int r = r0 + int(p / w), c = int(p % w), len = std::min(nr - jj, w - c);
    const float* xi = x + j / cols * image_stride;
    int ci = int(p0 / 9), ky = int(p0 % 9) / 3, kx = int(p0 % 3);
    for (Index d = p0; d < p1; ++d) {
      float* dst = stage + (d - p0) * bf16::kNr + jj;
      const int sr = r + ky - 1, first = c + kx - 1;  // source row, source column of lane 0
      for (int v = 0; v * 16 < len; ++v) {
        const int lane0 = 16 * v, count = std::min(16, len - lane0);
        const __mmask16 store = __mmask16((1u << count) - 1u);
        __mmask16 load = 0;
        if (sr >= 0 && sr < h) {  // lanes whose column first + lane0 + l lies in [0, w)
          const int lo = std::max(0, -(first + lane0)), hi = std::min(count, w - (first + lane0));
          if (hi > lo) load = __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
        }
        // A lane masked off reads nothing; a row outside the image reads from xi (no address outside).
        const float* src = load ? xi + ci * plane + Index(sr) * w + first + lane0 : xi;
        const __m512 values = _mm512_maskz_loadu_ps(load, src);
        _mm512_mask_storeu_ps(dst + lane0, store, values);
      }
      if (++kx == 3) {
        kx = 0;
        if (++ky == 3) {
          ky = 0;
          ++ci;
        }
      }
    }
    jj += len;
  }
  if (nr < bf16::kNr)
    for (Index d = p0; d < p1; ++d) std::fill(stage + (d - p0) * bf16::kNr + nr, stage + (d - p0 + 1) * bf16::kNr, 0.0f);
}

/// panel[q][c] (32 uint32s a row) for the kc rows of stage: the bf16 pair (row 2q, row 2q + 1),
/// rounded to nearest even as bf16::pack_b rounds (the odd tail's second half 0).
VGG_TARGET_BF16 inline void stage_to_panel(const float* stage, Index kc, std::uint32_t* panel) {
  // vcvtne2ps2bf16(hi, lo) gives words [lo 0-15 | hi 0-15]; interleave them into (lo c, hi c) pairs.
  alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                                11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  for (Index q = 0; q < (kc + 1) / 2; ++q) {
    const float* even = stage + 2 * q * bf16::kNr;
    const bool has_odd = 2 * q + 1 < kc;
    for (int half = 0; half < 2; ++half) {
      const __m512 lo = _mm512_loadu_ps(even + 16 * half);
      const __m512 hi = has_odd ? _mm512_loadu_ps(even + bf16::kNr + 16 * half) : _mm512_setzero_ps();
      const __m512i words = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_storeu_si512(panel + q * bf16::kNr + 16 * half, words);
    }
  }
}

/// y (cout x group_cols, row stride ldy) = epilogue(W * columns): the conv's output for a group of
/// images' bands (see gather_columns), with bias and, with relu, max(0, .) (NaN passes, as in the
/// other kernels). weights: pack_conv_weights's. requires: panel holds conv_panel_size(cin * 9),
/// stage kConvStageFloats, both 64-byte aligned; Tiles usable (HardwareTiles: amx_ready()).
template <class Tiles>
inline void conv3x3_forward_on(Tiles& tiles, const float* x, Index image_stride, int cin, int h, int w, int r0,
                               Index cols, Index group_cols, int cout, const std::uint32_t* weights, const float* bias,
                               bool relu, float* y, Index ldy, std::uint32_t* panel, float* stage) {
  const Index depth = Index(cin) * 9, pairs = conv_depth_pairs(depth);
  float* staging = stage + kKc * bf16::kNr;
  tiles.begin();
  for (Index j0 = 0; j0 < group_cols; j0 += bf16::kNr) {
    const int nr = int(std::min<Index>(bf16::kNr, group_cols - j0));
    for (Index p0 = 0; p0 < depth; p0 += kKc) {
      const Index p1 = std::min(depth, p0 + kKc);
      gather_columns(x, image_stride, h, w, r0, cols, j0, nr, p0, p1, stage);
      stage_to_panel(stage, p1 - p0, panel + p0 / 2 * bf16::kNr);
    }
    // Zero, not just any value: a stale NaN pattern times the zero-padded weights would still be NaN.
    std::memset(panel + (depth + 1) / 2 * bf16::kNr, 0, std::size_t(pairs - (depth + 1) / 2) * bf16::kNr * 4);
    for (Index i0 = 0; i0 < cout; i0 += kBlock) {
      tiles.zero_c();
      const std::uint32_t* a_block = weights + i0 * pairs;
      for (Index q0 = 0; q0 < pairs; q0 += kTilePairs)
        tiles.step(a_block + q0, pairs * 4, panel + q0 * bf16::kNr, bf16::kNr * 4);
      tiles.store_c(staging);
      store_block(staging, y + i0 * ldy + j0, ldy, int(std::min<Index>(kBlock, cout - i0)), nr,
                  Epilogue{1.0f, false, bias ? bias + i0 : nullptr, relu});
    }
  }
  tiles.end();
}
#endif  // VGG_BF16_KERNELS

}  // namespace vgg::cpu::amx
VGG_INTRINSICS_END
