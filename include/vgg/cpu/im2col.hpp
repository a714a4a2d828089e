#pragma once
// im2col for 3x3 kernels, stride 1, padding 1, over a band of output rows of one image, and its
// adjoint. Both take a range of the column matrix's rows (d = ci*9 + ky*3 + kx), so that a caller
// can build and consume the matrix a slice of depth at a time while the slice is in cache. A bf16
// variant writes the rows straight as bf16 pairs, for the bf16 weight gradient.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "vgg/cpu/gemm_bf16.hpp"
#include "vgg/cpu/kernel_path.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

namespace detail {
/// dst[0, count) = src[0, count) for the column matrix's runs (a few hundred floats to a few
/// thousand, source and destination misaligned to each other by the tap's shift). On the AVX-512
/// path by vector loads and stores: glibc's memcpy takes `rep movsb` from 8 KiB, which ran slower
/// on these mutually misaligned runs (docs/PERFORMANCE.md).
inline void copy_run(float* dst, const float* src, long count) {
#ifdef VGG_FAST_KERNELS
  long i = 0;
  for (; i + 64 <= count; i += 64) {
    const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
    const __m512 c = _mm512_loadu_ps(src + i + 32), d = _mm512_loadu_ps(src + i + 48);
    _mm512_storeu_ps(dst + i, a);
    _mm512_storeu_ps(dst + i + 16, b);
    _mm512_storeu_ps(dst + i + 32, c);
    _mm512_storeu_ps(dst + i + 48, d);
  }
  for (; i < count; i += 16) {
    const __mmask16 m = avx512::first_lanes(int(std::min<long>(count - i, 16)));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
#else
  std::memcpy(dst, src, sizeof(float) * std::size_t(count));
#endif
}

/// Where column-matrix row d (tap ky = d % 9 / 3, kx = d % 3) of band rows [r0, r1) reads its input
/// plane: its columns [0, head) and [head + body, (r1 - r0) * w) lie above or below the image (0);
/// column head + p reads plane[src0 + p] for p in [begin, end) (the run clipped at the plane's ends),
/// except the column that the shift wrapped across a row edge (x = 0 for kx = 0, x = w - 1 for kx =
/// 2), which is 0. body = 0 when no row of the band reads inside the image.
struct TapRun {
  int kx;
  long head, body, src0, begin, end;
};
inline TapRun tap_run(long d, int h, int w, int r0, int r1) {
  const int ky = int(d % 9) / 3, kx = int(d % 3);
  // Output rows whose source row r + ky - 1 lies inside the image: [first, last).
  const int first = std::max(r0, 1 - ky), last = std::min(r1, h + 1 - ky);
  if (first >= last) return {kx, 0, 0, 0, 0, 0};
  const long head = long(first - r0) * w, body = long(last - first) * w;
  const long src0 = long(first + ky - 1) * w + (kx - 1);
  // kx = 0 at the plane's start, kx = 2 at its end.
  return {kx, head, body, src0, std::max(0L, -src0), std::min(body, long(h) * w - src0)};
}
}  // namespace detail

/// Rows [d0, d1) of the band's column matrix (all cin*9 of them when d1 < 0):
/// col[(d - d0)*ld + (r - r0)*w + x] = in[ci][r + ky - 1][x + kx - 1] (0 outside) for
/// d = ci*9 + ky*3 + kx and rows r in [r0, r1). `in` is one C x H x W image; rows of `col` are `ld`
/// floats apart (ld >= (r1-r0)*w; 0 packs them; a stride of whole cache lines keeps GEMM loads
/// aligned). Each tap's rows inside the image are one contiguous run of the input plane, shifted by
/// kx - 1: one copy per tap, then the column that the shift wrapped across a row edge is zeroed
/// (per-row copies cost a call each, which dominated on 14- and 28-pixel rows).
inline void im2col3x3(const float* in, int cin, int h, int w, int r0, int r1, float* col, long ld = 0, long d0 = 0,
                      long d1 = -1) {
  const long cols = long(r1 - r0) * w;
  if (ld == 0) ld = cols;
  if (d1 < 0) d1 = long(cin) * 9;
  for (long d = d0; d < d1; ++d) {
    const float* plane = in + d / 9 * h * w;
    float* dst = col + (d - d0) * ld;
    const detail::TapRun run = detail::tap_run(d, h, w, r0, r1);
    if (run.body == 0) {
      std::fill(dst, dst + cols, 0.0f);
      continue;
    }
    std::fill(dst, dst + run.head, 0.0f);                    // rows above the image
    std::fill(dst + run.head + run.body, dst + cols, 0.0f);  // rows below it
    // dst[(r - r0)*w + x] = plane[(r + ky - 1)*w + x + kx - 1]: one run, clipped at the plane's ends.
    float* out = dst + run.head;
    detail::copy_run(out + run.begin, plane + run.src0 + run.begin, run.end - run.begin);
    if (run.kx == 0)
      for (long r = 0; r < run.body; r += w) out[r] = 0.0f;  // x = 0 reads x - 1 = -1
    else if (run.kx == 2)
      for (long r = w - 1; r < run.body; r += w) out[r] = 0.0f;  // x = w - 1 reads x + 1 = w
  }
}

#ifdef VGG_BF16_KERNELS
/// Rows [d0, d1) of the column matrix of `images` images side by side (image i at in + i *
/// image_stride, its columns at i * (r1 - r0) * w) as bf16 pair rows: row d - d0 at rows + (d - d0)
/// * row_stride, pixel pairs in order (bf16::pack_row's words). For the bf16 weight gradient taken
/// as columns x dz^T (bf16::gemm_rows_a), whose depth runs along the columns' rows, so that nothing
/// is transposed. Where an image's columns are an odd count, each row is built by im2col3x3 into
/// `stage` (columns floats, in L1) and rounded from there; otherwise straight from the planes.
/// requires: bf16::bf16_gemm_available(); row_stride >= ceil(columns / 2).
VGG_TARGET_BF16 inline void im2col3x3_bf16_rows(const float* in, long image_stride, int images, int cin, int h,
                                                int w, int r0, int r1, long d0, long d1, float* stage,
                                                std::uint32_t* rows, long row_stride) {
  const long cols = long(r1 - r0) * w, n = images * cols;
  if (cols % 2 != 0) {  // images' columns would share words: staged whole, then rounded
    for (long d = d0; d < d1; ++d) {
      for (int i = 0; i < images; ++i)
        im2col3x3(in + i * image_stride, cin, h, w, r0, r1, stage + i * cols, n, d, d + 1);
      bf16::pack_row(stage, n, rows + (d - d0) * row_stride);
    }
    return;
  }
  // Otherwise each image's columns are whole words, rounded straight from the input plane, 32 at a
  // time: two masked loads of the tap's shifted run (lanes outside it, and the column that the
  // shift wrapped across a row edge, load 0), one rounding, one store. Staging them first, as
  // above, copies every column twice more: the width/8 net's bf16 weight gradients took 3-13 %
  // longer that way (AMD EPYC family 25 model 17; docs/PERFORMANCE.md).
  for (long d = d0; d < d1; ++d) {
    const detail::TapRun run = detail::tap_run(d, h, w, r0, r1);
    // Column p of an image reads plane[src0 - head + p] for p in [begin, end), else 0.
    const long head = run.head, src0 = run.src0, begin = head + run.begin, end = head + run.end;
    // The wrapped column: p with p % w == edge (head is whole rows).
    const long edge = run.kx == 0 ? 0 : run.kx == 2 ? w - 1 : -1;
    for (int i = 0; i < images; ++i) {
      const float* plane = in + i * image_stride + d / 9 * long(h) * w;
      std::uint32_t* out = rows + (d - d0) * row_stride + i * cols / 2;
      long wrapped = edge;  // the first wrapped column at or after p0 (stepped: no division per chunk)
      for (long p0 = 0; p0 < cols; p0 += 32) {
        const long lo = std::clamp(begin - p0, 0L, 32L), hi = std::clamp(end - p0, 0L, 32L);
        std::uint32_t live = hi > lo ? (hi == 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u) : 0u;
        if (edge >= 0)
          for (; wrapped < p0 + 32; wrapped += w) live &= ~(1u << (wrapped - p0));
        // Masked lanes are never accessed; the addresses are formed as integers since they may lie
        // outside the plane.
        auto at = [&](long offset) {
          return reinterpret_cast<const float*>(reinterpret_cast<std::uintptr_t>(plane) +
                                                std::uintptr_t(src0 - head + p0 + offset) * sizeof(float));
        };
        const __m512 a = _mm512_maskz_loadu_ps(__mmask16(live), at(0));
        const __m512 b = _mm512_maskz_loadu_ps(__mmask16(live >> 16), at(16));
        const long words = std::min(16L, (cols - p0) / 2);
        _mm512_mask_storeu_epi32(out + p0 / 2, __mmask16(words == 16 ? 0xFFFF : (1u << words) - 1u),
                                 (__m512i)_mm512_cvtne2ps_pbh(b, a));
      }
    }
  }
}
#endif

/// The adjoint of im2col3x3 over the same rows [d0, d1) (all when d1 < 0):
/// in[ci][r + ky - 1][x + kx - 1] += col[(d - d0)*ld + (r - r0)*w + x] for rows r in [r0, r1), col's
/// rows `ld` floats apart (0: packed). Touches input rows r0 - 1 .. r1 only.
inline void col2im3x3_add(const float* col, int cin, int h, int w, int r0, int r1, float* in, long ld = 0,
                          long d0 = 0, long d1 = -1) {
  if (ld == 0) ld = long(r1 - r0) * w;
  if (d1 < 0) d1 = long(cin) * 9;
  for (long d = d0; d < d1; ++d) {
    float* plane = in + d / 9 * h * w;
    const int ky = int(d % 9) / 3, kx = int(d % 3);
    const float* src = col + (d - d0) * ld;
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

}  // namespace vgg::cpu
VGG_INTRINSICS_END
