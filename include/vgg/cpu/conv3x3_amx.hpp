#pragma once
// 3x3 convolutions (stride 1, padding 1) on AMX tiles, for bf16 mode where the CPU has amx_bf16.
//
// The forward and the input gradient are direct convolutions, with no column matrix at all: the
// input is laid out as bf16 channel pairs with a zero border, and for each of the 9 taps the B tile
// (16 channel pairs x 16 output pixels) is read from that layout at an offset, its rows a channel-pair
// plane apart. Before, im2col wrote a band's columns (up to 4 MiB of fp32), which were read again to
// be packed as bf16 panels, and each 256-deep pass stored and re-read C: with AMX the products are
// cheap (a width/8 layer uses each column 8-64 times), so those passes over memory were most of the
// layer's time (perf, Xeon family 6 model 207: im2col copies and B packing 30 %, the tiles 13 % of a
// width/8 bf16 training step). Gathering the columns per 32-column panel into L1 instead was tried
// and measured slower than the direct layout (width/8 bf16 eval 44 ms against 15.6 ms).
//
// The weight gradient's product (columns x dz^T, its depth the pixels) still takes the columns, as
// bf16 pair rows that A tiles load straight from, with dz^T as B panels packed once per band.
//
// Written over a tile-operations type like gemm_on (HardwareTiles, or EmulatedTiles to test the
// layouts and loops on any machine with avx512_bf16).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vgg/cpu/gemm_amx.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu::amx {

/// n rounded up to whole 32-row (or 32-column) blocks of C.
constexpr Index whole_blocks(Index n) { return (n + kBlock - 1) / kBlock * kBlock; }
/// Channel pairs of the direct convolution's input (conv3x3_direct_on): cin / 2 rounded up, and past
/// one tile's 16 pairs, to whole tiles.
constexpr Index direct_pairs(Index cin) {
  const Index pairs = (cin + 1) / 2;
  return pairs <= kTilePairs ? pairs : (pairs + kTilePairs - 1) / kTilePairs * kTilePairs;
}
/// Depth pairs per tile step of the direct convolution.
constexpr int direct_step_pairs(Index cin) { return int(std::min<Index>(direct_pairs(cin), kTilePairs)); }
/// uint32s from one row of pack_direct_weights' weights to the next: the pairs, and where they are
/// an even number of 64-byte lines, one line more. An A tile's 16 rows are 16 consecutive rows; at a
/// power of two bytes apart (1 KiB for 512 channels) they fell into 4 of L1d's 64 sets.
constexpr Index direct_weight_stride(Index cin) {
  const Index pairs = direct_pairs(cin);
  return pairs % kTilePairs == 0 && pairs / kTilePairs % 2 == 0 ? pairs + kTilePairs : pairs;
}
/// uint32s of weights packed by pack_direct_weights: 9 taps x round_up(cout, 32) rows x
/// direct_weight_stride(cin).
constexpr Index direct_weights_size(Index cout, Index cin) {
  return 9 * whole_blocks(cout) * direct_weight_stride(cin);
}
/// Output channels per chunk of conv3x3_direct_on: whole 32-channel blocks whose packed weights
/// (9 taps x 32 rows x direct_weight_stride words each) take at most a quarter of L2, at least one block.
inline Index direct_cout_chunk(Index cout, Index cin) {
  const Index block_bytes = 9 * kBlock * direct_weight_stride(cin) * 4;
  const Index blocks = std::max<Index>(1, Index(cpu_info().cache.l2) / 4 / block_bytes);
  return std::min(blocks * kBlock, whole_blocks(cout));
}
/// uint32s of a padded input band (pad_input_band) of `images` images, `rows` output rows of w
/// pixels: (rows + 2) x (w + 2) per channel pair, and 32 words of slack (a B tile of the last
/// columns reads up to 16 words past a row's end).
constexpr Index direct_band_size(Index images, Index cin, Index rows, Index w) {
  return images * direct_pairs(cin) * (rows + 2) * (w + 2) + 32;
}
/// uint32s of op(B) (k x n) packed by pack_bt_panels_padded (B panels, depth padded to whole tiles).
constexpr Index panels_padded_size(Index k, Index n) { return whole_blocks(n) * padded_pairs(k); }

#ifdef VGG_BF16_KERNELS

// ---- the direct convolution: no columns at all ----
// The input is laid out as bf16 channel pairs ([pair][row][column], one uint32 per pixel and pair,
// with a zero border), so that for tap (ky, kx) the B tile of 16 output pixels x 16 channel pairs is
// the band itself, read at an offset (ky rows, kx columns) with a channel-pair plane as its row
// stride: nothing is gathered per tap. The weights are packed per tap, [tap][cout][pair]. A C tile
// pair covers 32 output channels x two runs of 16 pixels (within a row, or two short rows).

/// The bf16 pairs (channel 2j, 2j + 1) of tap k for 16 consecutive pairs j from `first` (channel 0's
/// tap 0; channel c's taps at first + c * channel_stride), zero from channel `channels` on: two
/// gathers, one vcvtne2ps2bf16 and an interleave (per pair, the even channel in the low half).
VGG_TARGET_BF16 inline __m512i gather_tap_pairs(const float* first, Index channel_stride, int k, int channels) {
  alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                                11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even_index = _mm512_add_epi32(_mm512_mullo_epi32(j, _mm512_set1_epi32(int(2 * channel_stride))),
                                              _mm512_set1_epi32(k));
  const __m512i odd_index = _mm512_add_epi32(even_index, _mm512_set1_epi32(int(channel_stride)));
  const __mmask16 even_lanes = avx512::first_lanes((channels + 1) / 2), odd_lanes = avx512::first_lanes(channels / 2);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 even = _mm512_mask_i32gather_ps(zero, even_lanes, even_index, first, 4);
  const __m512 odd = _mm512_mask_i32gather_ps(zero, odd_lanes, odd_index, first, 4);
  return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), (__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

/// The weights (cout x cin x 3 x 3) packed for conv3x3_direct_on: row tap * round_up(cout, 32) + co
/// (direct_weight_stride(cin) words each), word q = the bf16 pair (channel 2q, channel 2q + 1) of tap
/// (ky * 3 + kx), zero beyond cin and cout and in the stride's padding.
/// With InputGradient, the weights of the input gradient's convolution instead (of dz, cout channels
/// in, cin out): the kernel turned 180 degrees, its channels swapped. With parts > 1, only the rows
/// of the part-th of `parts` equal ranges of output channels (all nine taps of each).
template <bool InputGradient = false>
VGG_TARGET_BF16 inline void pack_direct_weights(const float* weight, int cout, int cin, std::uint32_t* dst,
                                                int part = 0, int parts = 1) {
  const int out = InputGradient ? cin : cout, in = InputGradient ? cout : cin;
  const Index stride = direct_weight_stride(in), rows = whole_blocks(out), pairs = (in + 1) / 2;
  // Input channel i's taps for output channel o: 9 floats at o's base + i * channel_stride. Sixteen
  // pairs of input channels are gathered per tap (the scalar loop, one pair and one tap at a time,
  // was 3 % of a full-width bf16 forward on the Xeon family 6 model 207).
  const Index channel_stride = InputGradient ? Index(cin) * 9 : 9;
  const Index per_part = (rows + parts - 1) / parts;
  for (Index o = part * per_part; o < std::min(rows, (part + 1) * per_part); ++o) {
    for (int tap = 0; tap < 9; ++tap) {  // what the gathers leave: padding, and rows past `out`
      std::uint32_t* row = dst + (tap * rows + o) * stride;
      std::fill(row + (o < out ? pairs : 0), row + stride, 0u);
    }
    if (o >= out) continue;
    const float* base = InputGradient ? weight + o * 9 : weight + o * Index(cin) * 9;
    for (Index q0 = 0; q0 < pairs; q0 += 16) {
      const __mmask16 words = avx512::first_lanes(int(std::min<Index>(16, pairs - q0)));
      for (int tap = 0; tap < 9; ++tap) {
        const int k = InputGradient ? 8 - tap : tap;
        const __m512i packed = gather_tap_pairs(base + 2 * q0 * channel_stride, channel_stride, k, int(in - 2 * q0));
        _mm512_mask_storeu_epi32(dst + (tap * rows + o) * stride + q0, words, packed);
      }
    }
  }
}

/// band[((i * pairs + q) * (rows + 2) + rr) * (w + 2) + cc] = the bf16 pair (channel 2q, 2q + 1) of
/// image i's pixel (r0 - 1 + rr, cc - 1), zero outside the image and beyond cin; rows = r1 - r0,
/// pairs = direct_pairs(cin); image i at x + i * image_stride, its channels channel_stride apart
/// (0: h * w). The slack after it is zeroed.
VGG_TARGET_BF16 inline void pad_input_band(const float* x, Index image_stride, int images, int cin, int h, int w,
                                           int r0, int r1, std::uint32_t* band, Index channel_stride = 0) {
  alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                                11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  const Index pairs = direct_pairs(cin), prow = w + 2, pplane = Index(r1 - r0 + 2) * prow;
  const Index plane = channel_stride ? channel_stride : Index(h) * w;
  for (int i = 0; i < images; ++i)
    for (Index q = 0; q < pairs; ++q) {
      std::uint32_t* dst = band + (i * pairs + q) * pplane;
      const float* even = x + i * image_stride + 2 * q * plane;
      for (int rr = 0; rr < r1 - r0 + 2; ++rr) {
        std::uint32_t* row = dst + rr * prow;
        const int sr = r0 - 1 + rr;
        row[0] = row[w + 1] = 0;
        if (sr < 0 || sr >= h || 2 * q >= cin) {
          std::fill(row + 1, row + 1 + w, 0u);
          continue;
        }
        const float* lo_src = even + Index(sr) * w;
        for (int c0 = 0; c0 < w; c0 += 16) {
          const __mmask16 lanes = w - c0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (w - c0)) - 1u);
          const __m512 lo = _mm512_maskz_loadu_ps(lanes, lo_src + c0);
          const __m512 hi = 2 * q + 1 < cin ? _mm512_maskz_loadu_ps(lanes, lo_src + plane + c0) : _mm512_setzero_ps();
          const __m512i words = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
          _mm512_mask_storeu_epi32(row + 1 + c0, lanes, words);
        }
      }
    }
  std::fill(band + images * pairs * pplane, band + images * pairs * pplane + 32, 0u);
}

/// y = epilogue(conv3x3(x) + bias) for a band of images (pad_input_band's band of rows r1 - r0 = rows
/// of w pixels, images side by side: output column j = i * rows * w + r * w + c, row stride ldy),
/// with relu max(0, .) (NaN passes). weights: pack_direct_weights'. requires: staging kStagingFloats;
/// Tiles usable (HardwareTiles: amx_ready()); cout_chunk a multiple of 32 (0: direct_cout_chunk's).
template <class Tiles>
inline void conv3x3_direct_on(Tiles& tiles, const std::uint32_t* band, int images, int cin, int rows, int w, int cout,
                              const std::uint32_t* weights, const float* bias, bool relu, float* y, Index ldy,
                              float* staging, Index cout_chunk = 0) {
  const Index pairs = direct_pairs(cin), step_pairs = direct_step_pairs(cin), co_rows = whole_blocks(cout);
  const Index a_stride = direct_weight_stride(cin);
  const Index prow = w + 2, pplane = Index(rows + 2) * prow, runs_per_row = (w + 15) / 16;
  const Index runs = Index(images) * rows * runs_per_row;
  // Run s: image, output row, first column; its B origin (tap 0, pair 0) and its first output column.
  const auto origin = [&](Index s, Index& column, int& count) {
    const Index i = s / (rows * runs_per_row), rest = s % (rows * runs_per_row);
    const Index r = rest / runs_per_row, c0 = rest % runs_per_row * 16;
    column = (i * rows + r) * w + c0;
    count = int(std::min<Index>(16, w - c0));
    return band + i * pairs * pplane + r * prow + c0;
  };
  // Output channels in chunks whose weights stay in L2 while every run of the band passes (with the
  // runs outer, a 512-channel layer read its 4.7 MB of weights from L3 once per 32 pixels); within a
  // chunk, each run pair's B tiles are reused across its blocks.
  const Index chunk = cout_chunk > 0 ? cout_chunk : direct_cout_chunk(cout, cin);
  tiles.begin(int(step_pairs));
  for (Index chunk0 = 0; chunk0 < cout; chunk0 += chunk)
  for (Index s = 0; s < runs; s += 2) {
    Index column0 = 0, column1 = 0;
    int count0 = 0, count1 = 0;
    const std::uint32_t* b0 = origin(s, column0, count0);
    const std::uint32_t* b1 = s + 1 < runs ? origin(s + 1, column1, count1) : b0;  // no second run: not stored
    for (Index co0 = chunk0; co0 < std::min<Index>(cout, chunk0 + chunk); co0 += kBlock) {
      tiles.zero_c();
      for (int tap = 0; tap < 9; ++tap) {
        const Index offset = tap / 3 * prow + tap % 3;
        const std::uint32_t* a = weights + (tap * co_rows + co0) * a_stride;
        for (Index q0 = 0; q0 < pairs; q0 += step_pairs)
          tiles.step(a + q0, a_stride * 4, b0 + offset + q0 * pplane, b1 + offset + q0 * pplane, pplane * 4);
      }
      tiles.store_c(staging);
      const int mr = int(std::min<Index>(kBlock, cout - co0));
      const Epilogue e{1.0f, false, bias ? bias + co0 : nullptr, relu};
      store_block(staging, y + co0 * ldy + column0, ldy, mr, count0, e);
      if (count1) store_block(staging + 16, y + co0 * ldy + column1, ldy, mr, count1, e);
    }
  }
  tiles.end();
}

// ---- the weight gradient's product on AMX tiles, nothing packed per product ----
// Taken transposed, dW^T = columns * dz^T, from the columns as bf16 pair rows (im2col3x3_bf16_rows:
// the depth of this product, pixels, runs along their rows, so A tiles load straight from them) and
// dz^T as B panels packed once per band. Depths are padded with zeros to whole tiles in both
// operands, and the sums stay in the tiles over the whole depth.

/// op(B) = B^T (B stored n x k, row stride ldb) as 32-column panels, panel j0 / 32 at dst + j0 / 32 *
/// 32 * padded_pairs(k), each [pair][32] as bf16::pack_bt packs it, its pairs zero from (k + 1) / 2 on.
inline void pack_bt_panels_padded(const float* b, Index ldb, Index k, Index n, std::uint32_t* dst) {
  const Index pairs = (k + 1) / 2, padded = padded_pairs(k);
  for (Index j0 = 0; j0 < n; j0 += bf16::kNr) {
    std::uint32_t* panel = dst + j0 / bf16::kNr * bf16::kNr * padded;
    const int nr = int(std::min<Index>(bf16::kNr, n - j0));
    for (Index p0 = 0; p0 < k; p0 += kKc)
      bf16::pack_bt(b, ldb, p0, std::min(kKc, k - p0), j0, nr, panel + p0 / 2 * bf16::kNr);
    std::memset(panel + pairs * bf16::kNr, 0, std::size_t(padded - pairs) * bf16::kNr * 4);
  }
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
