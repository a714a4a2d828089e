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
/// uint32s of op(B) (k x n) packed by pack_panels_padded (B panels, depth padded to whole tiles).
constexpr Index panels_padded_size(Index k, Index n) { return (n + kBlock - 1) / kBlock * kBlock * padded_pairs(k); }
/// uint32s of one column slice of W^T packed by pack_weights_t (32-row blocks over cout's pairs).
constexpr Index weights_t_slice_size(Index rows, Index cout) {
  return (rows + kBlock - 1) / kBlock * kBlock * padded_pairs(cout);
}

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

/// panel[q][c] (32 uint32s a row) for the kc rows of stage: the bf16 pair (row 2q, row 2q + 1), as
/// bf16::pack_b packs a B panel (the odd tail's second half 0). requires: panel 64-byte aligned.
inline void stage_to_panel(const float* stage, Index kc, std::uint32_t* panel) {
  bf16::pack_b(stage, bf16::kNr, 0, kc, 0, bf16::kNr, panel);
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

// ---- the backward's products on AMX tiles, nothing packed per product ----
// The weight gradient is taken transposed, dW^T = columns * dz^T, from the columns as bf16 pair rows
// (im2col3x3_bf16_rows: the depth of this product, pixels, runs along their rows, so A tiles load
// straight from them) and dz^T as B panels packed once per band; the input gradient's W^T is packed
// once per backward and dz as B panels once per band for all column slices. Depths are padded with
// zeros to whole tiles in both operands, and the sums stay in the tiles over the whole depth.


/// op(B) (k x n) as 32-column panels, panel j0 / 32 at dst + j0 / 32 * 32 * padded_pairs(k), each
/// [pair][32] with its pairs zero from (k + 1) / 2 on; op(B) is B (row-major k x n) or, with TransB,
/// B^T (B stored n x k). ldb: B's row stride.
template <bool TransB>
VGG_TARGET_BF16 inline void pack_panels_padded(const float* b, Index ldb, Index k, Index n, std::uint32_t* dst) {
  const Index pairs = (k + 1) / 2, padded = padded_pairs(k);
  for (Index j0 = 0; j0 < n; j0 += bf16::kNr) {
    std::uint32_t* panel = dst + j0 / bf16::kNr * bf16::kNr * padded;
    const int nr = int(std::min<Index>(bf16::kNr, n - j0));
    for (Index p0 = 0; p0 < k; p0 += kKc) {
      const Index kc = std::min(kKc, k - p0);
      if constexpr (TransB)
        bf16::pack_bt(b, ldb, p0, kc, j0, nr, panel + p0 / 2 * bf16::kNr);
      else
        bf16::pack_b(b, ldb, p0, kc, j0, nr, panel + p0 / 2 * bf16::kNr);
    }
    std::memset(panel + pairs * bf16::kNr, 0, std::size_t(padded - pairs) * bf16::kNr * 4);
  }
}

/// Rows [d0, d0 + rows) of W^T (weight: cout x depth, row-major) in 32-row blocks, block i0 at dst +
/// i0 * padded_pairs(cout), each row cout's pairs, zero beyond (rows beyond `rows` zero too). With
/// parts > 1, only part `part` of the blocks.
inline void pack_weights_t(const float* weight, Index cout, Index depth, Index d0, Index rows, std::uint32_t* dst,
                           int part = 0, int parts = 1) {
  for (Index i0 = Index(part) * kBlock; i0 < rows; i0 += Index(parts) * kBlock)
    pack_a<true>(weight + d0, depth, i0, int(std::min<Index>(kBlock, rows - i0)), 0, cout,
                 dst + i0 * padded_pairs(cout));
}

/// Zeroes words [(k + 1) / 2, padded_pairs(k)) of `rows` pair rows (row stride `stride`): the tile
/// padding of rows written by im2col3x3_bf16_rows.
inline void zero_row_padding(std::uint32_t* rows_data, Index rows, Index stride, Index k) {
  const Index pairs = (k + 1) / 2, padded = padded_pairs(k);
  for (Index r = 0; r < rows; ++r) std::memset(rows_data + r * stride + pairs, 0, std::size_t(padded - pairs) * 4);
}

/// C (m x n, ldc) = out(A * B) on the tiles, nothing packed here: A as bf16 pair rows (row i at a + i
/// * a_stride uint32s), B as 32-column panels (panel j at b + j * b_panel_stride uint32s, [pair][32]),
/// both `pairs` pairs deep, a multiple of kTilePairs, zero beyond the product's depth.
/// requires: A's rows up to round_up(m, 32) readable (rows past m reach only C rows not stored) and
/// finite where their B pairs are nonzero; staging kStagingFloats; Tiles usable.
template <class Tiles>
inline void gemm_rows_panels_on(Tiles& tiles, Index m, Index n, Index pairs, const std::uint32_t* a, Index a_stride,
                                const std::uint32_t* b, Index b_panel_stride, float* c, Index ldc, float* staging,
                                const Epilogue& out) {
  tiles.begin();
  for (Index i0 = 0; i0 < m; i0 += kBlock) {
    const int mr = int(std::min<Index>(kBlock, m - i0));
    for (Index j0 = 0; j0 < n; j0 += bf16::kNr) {
      const std::uint32_t* panel = b + j0 / bf16::kNr * b_panel_stride;
      tiles.zero_c();
      for (Index q0 = 0; q0 < pairs; q0 += kTilePairs)
        tiles.step(a + i0 * a_stride + q0, a_stride * 4, panel + q0 * bf16::kNr, bf16::kNr * 4);
      tiles.store_c(staging);
      Epilogue e = out;
      if (e.bias) e.bias += i0;
      store_block(staging, c + i0 * ldc + j0, ldc, mr, int(std::min<Index>(bf16::kNr, n - j0)), e);
    }
  }
  tiles.end();
}
#endif  // VGG_BF16_KERNELS

}  // namespace vgg::cpu::amx
VGG_INTRINSICS_END
