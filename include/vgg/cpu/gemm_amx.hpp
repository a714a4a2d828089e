#pragma once
// bf16 GEMM on AMX tiles (tdpbf16ps), for CPUs with amx_bf16: the same contract, operands and
// epilogue as gemm_bf16.hpp's vdpbf16ps kernel, which it replaces inside bf16::gemm where it runs.
//
// A 32 x 32 block of C is four 16 x 16 fp32 tiles (tmm0-3), fed per 32-deep step by two A tiles
// (16 rows x 16 depth pairs, tmm4-5) and two B tiles (16 depth pairs x 16 columns, tmm6-7). B is
// bf16::pack_b's panel unchanged ([depth pair][32 columns] is AMX's pair-interleaved B layout: each
// B tile is half a panel row, 64 of its 128 bytes); A is packed row by row ([row][depth pair]),
// which is the A tile's layout. Depth is padded with zeros to whole 16-pair tiles.
//
// The kernel is written once over a tile-operations type: `HardwareTiles` issues the instructions,
// `EmulatedTiles` computes what they compute (the Intel SDM's TDPBF16PS: per output, two bf16
// products added in turn in fp32), so the packing, the loop and the epilogue are tested on every
// machine with avx512_bf16 (tests/core/test_bf16.cpp), and on an AMX machine the hardware is tested
// against them. Hosts of the same CPU model differ (some Xeon family 6 model 207 virtual machines hide
// amx_bf16, one showed it and ran these kernels, 2026-12-07), so `amx_ready()` also runs a start-up
// self-check: a product on the tiles against the same product emulated; a mismatch keeps the
// vdpbf16ps kernel and says why. The convolutions' own tile kernels are in conv3x3_amx.hpp.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "vgg/cpu/cpu_info.hpp"
#include "vgg/cpu/gemm_bf16.hpp"
#include "vgg/random.hpp"

#if defined(VGG_BF16_KERNELS) && defined(__linux__)
#define VGG_AMX_KERNELS 1
#define VGG_TARGET_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")))
#endif

VGG_INTRINSICS_BEGIN
namespace vgg::cpu::amx {

using Index = std::ptrdiff_t;
inline constexpr int kBlock = 32;         // rows and columns of C per kernel call
inline constexpr int kTilePairs = 16;     // depth pairs per A or B tile (64 bytes per tile row)
inline constexpr Index kKc = bf16::kKc;   // depth per pass: bf16's, so packed B panels are shared

/// Depth pairs of a pass of kc elements, padded to whole tiles.
constexpr Index padded_pairs(Index kc) { return ((kc + 1) / 2 + kTilePairs - 1) / kTilePairs * kTilePairs; }
/// uint32s the packed A of one pass takes for m rows (whole 32-row blocks).
constexpr Index packed_a_size(Index m) { return (m + kBlock - 1) / kBlock * kBlock * padded_pairs(kKc); }
/// floats of the kernel's C staging block.
inline constexpr Index kStagingFloats = kBlock * kBlock;

#ifdef VGG_AMX_KERNELS
using avx512::Epilogue;

/// The tile instructions themselves. requires: the OS granted the tile state (request_amx_permission).
struct HardwareTiles {
  struct alignas(64) Config {
    std::uint8_t palette = 1, start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t bytes_per_row[16] = {};
    std::uint8_t rows[16] = {};
  };
  /// Tiles for steps of `pairs` depth pairs (1-16): A tiles 16 rows x pairs, B tiles pairs rows.
  VGG_TARGET_AMX void begin(int pairs = kTilePairs) {
    Config config;
    for (int t = 0; t < 8; ++t) {
      config.bytes_per_row[t] = t >= 4 && t < 6 ? std::uint16_t(4 * pairs) : std::uint16_t(64);
      config.rows[t] = t >= 6 ? std::uint8_t(pairs) : std::uint8_t(16);
    }
    _tile_loadconfig(&config);
  }
  VGG_TARGET_AMX void end() { _tile_release(); }
  VGG_TARGET_AMX void zero_c() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  /// C(2x2 tiles) += A(rows 0-15, 16-31) x B(columns 0-15, 16-31) for one 16-pair step; a_stride and
  /// b_stride in bytes.
  VGG_TARGET_AMX void step(const std::uint32_t* a, Index a_stride, const std::uint32_t* b, Index b_stride) {
    step(a, a_stride, b, b + 16, b_stride);
  }
  /// The same with C's two column halves from two B tiles anywhere (b0: columns 0-15, b1: 16-31).
  VGG_TARGET_AMX void step(const std::uint32_t* a, Index a_stride, const std::uint32_t* b0, const std::uint32_t* b1,
                           Index b_stride) {
    _tile_loadd(4, a, a_stride);
    _tile_loadd(5, a + 16 * (a_stride / 4), a_stride);
    _tile_loadd(6, b0, b_stride);
    _tile_loadd(7, b1, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  /// The 32 x 32 block into c (row stride 32 floats).
  VGG_TARGET_AMX void store_c(float* c) {
    _tile_stored(0, c, kBlock * 4);
    _tile_stored(1, c + 16, kBlock * 4);
    _tile_stored(2, c + 16 * kBlock, kBlock * 4);
    _tile_stored(3, c + 16 * kBlock + 16, kBlock * 4);
  }
};
#endif

/// What the tile instructions compute, in plain C++: the reference the hardware is checked against.
struct EmulatedTiles {
  float c[kBlock][kBlock] = {};
  int pairs = kTilePairs;
  void begin(int step_pairs = kTilePairs) { pairs = step_pairs; }
  void end() {}
  void zero_c() { std::memset(c, 0, sizeof c); }
  void step(const std::uint32_t* a, Index a_stride, const std::uint32_t* b, Index b_stride) {
    step(a, a_stride, b, b + 16, b_stride);
  }
  void step(const std::uint32_t* a, Index a_stride, const std::uint32_t* b0, const std::uint32_t* b1, Index b_stride) {
    const Index as = a_stride / 4, bs = b_stride / 4;
    for (int i = 0; i < kBlock; ++i)
      for (int j = 0; j < kBlock; ++j) {
        float sum = c[i][j];
        const std::uint32_t* b = j < 16 ? b0 : b1 - 16;
        for (int q = 0; q < pairs; ++q) {
          const std::uint32_t x = a[i * as + q], y = b[q * bs + j];
          // TDPBF16PS: inputs and output with denormals flushed to zero, round to nearest even.
          sum = flush(sum + flush(bf16::from_bf16(std::uint16_t(x))) * flush(bf16::from_bf16(std::uint16_t(y))));
          sum = flush(sum + flush(bf16::from_bf16(std::uint16_t(x >> 16))) * flush(bf16::from_bf16(std::uint16_t(y >> 16))));
        }
        c[i][j] = sum;
      }
  }
  void store_c(float* out) { std::memcpy(out, c, sizeof c); }

 private:
  static float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
};

#ifdef VGG_BF16_KERNELS
/// Packs rows [i0, i0 + 32) (zero from row mr) x depth [p0, p0 + kc) of op(A) into dst[row][pairs]
/// with `pairs` = padded_pairs(kc) (zero beyond kc): each row is an A tile's row layout.
template <bool TransA>
VGG_TARGET_BF16 inline void pack_a(const float* a, Index lda, Index i0, int mr, Index p0, Index kc,
                                   std::uint32_t* dst) {
  const Index pairs = padded_pairs(kc);
  for (int r = 0; r < kBlock; ++r) {
    std::uint32_t* row = dst + r * pairs;
    if (r >= mr) {
      std::memset(row, 0, std::size_t(pairs) * 4);
      continue;
    }
    if constexpr (!TransA) {
      const float* src = a + (i0 + r) * lda + p0;
      for (Index q0 = 0; q0 < pairs; q0 += 16) {
        const Index count = std::clamp<Index>(kc - 2 * q0, 0, 32);
        const __mmask16 lo_lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
        const __mmask16 hi_lanes =
            count >= 32 ? __mmask16(0xFFFF) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1u);
        const __m512 lo = _mm512_maskz_loadu_ps(lo_lanes, src + 2 * q0);
        const __m512 hi = _mm512_maskz_loadu_ps(hi_lanes, src + 2 * q0 + 16);
        _mm512_storeu_si512(row + q0, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));  // word 2q is depth 2q
      }
    } else {
      const auto at = [&](Index p) -> float { return p < kc ? a[(p0 + p) * lda + i0 + r] : 0.0f; };
      for (Index q = 0; q < pairs; ++q) row[q] = bf16::pair(at(2 * q), at(2 * q + 1));
    }
  }
}

/// C block (rows < mr, columns < nr, ldc) = epilogue(staged 32 x 32 block).
VGG_TARGET_BF16 inline void store_block(const float* staged, float* c, Index ldc, int mr, int nr, const Epilogue& e) {
  const __m512 alpha = _mm512_set1_ps(e.alpha), zero = _mm512_setzero_ps();
  for (int i = 0; i < mr; ++i)
    for (int v = 0; v < 2; ++v) {
      const int count = std::clamp(nr - 16 * v, 0, 16);
      if (count == 0) continue;
      const __mmask16 lanes = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1u);
      float* out = c + i * ldc + 16 * v;
      __m512 r = _mm512_mul_ps(alpha, _mm512_loadu_ps(staged + i * kBlock + 16 * v));
      if (e.accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(lanes, out));
      if (e.bias) r = _mm512_add_ps(r, _mm512_set1_ps(e.bias[i]));
      if (e.relu) r = _mm512_max_ps(zero, r);  // zero first: a NaN passes, as in the other kernels
      _mm512_mask_storeu_ps(out, lanes, r);
    }
}

/// C (m x n, ldc) = out(alpha * op(A) * op(B)) on the tiles `Tiles` gives; the operands, layouts and
/// epilogue are bf16::gemm's. requires: a_pack holds packed_a_size(m), b_pack bf16::packed_b_size(),
/// staging kStagingFloats, all 64-byte aligned; Tiles usable (HardwareTiles: amx_ready()).
template <bool TransA, bool TransB, class Tiles>
inline void gemm_on(Tiles& tiles, Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb,
                    float* c, Index ldc, std::uint32_t* a_pack, std::uint32_t* b_pack, float* staging,
                    const Epilogue& out) {
  tiles.begin();
  for (Index p0 = 0; p0 < k; p0 += kKc) {
    const Index kc = std::min(kKc, k - p0), pairs = (kc + 1) / 2, padded = padded_pairs(kc);
    const Epilogue e{out.alpha, out.accumulate || p0 > 0, p0 == 0 ? out.bias : nullptr, out.relu && p0 + kc == k};
    for (Index i0 = 0; i0 < m; i0 += kBlock)
      pack_a<TransA>(a, lda, i0, int(std::min<Index>(kBlock, m - i0)), p0, kc, a_pack + i0 * padded);
    for (Index j0 = 0; j0 < n; j0 += kBlock) {
      const int nr = int(std::min<Index>(kBlock, n - j0));
      if constexpr (TransB)
        bf16::pack_bt(b, ldb, p0, kc, j0, nr, b_pack);
      else
        bf16::pack_b(b, ldb, p0, kc, j0, nr, b_pack);
      // Zero, not just any value: a stale NaN pattern times the zero-padded A would still be NaN.
      std::memset(b_pack + pairs * bf16::kNr, 0, std::size_t(padded - pairs) * bf16::kNr * 4);
      for (Index i0 = 0; i0 < m; i0 += kBlock) {
        tiles.zero_c();
        const std::uint32_t* a_block = a_pack + i0 * padded;
        for (Index q0 = 0; q0 < padded; q0 += kTilePairs)
          tiles.step(a_block + q0, padded * 4, b_pack + q0 * bf16::kNr, bf16::kNr * 4);
        tiles.store_c(staging);
        Epilogue block = e;
        if (block.bias) block.bias += i0;
        store_block(staging, c + i0 * ldc + j0, ldc, int(std::min<Index>(kBlock, m - i0)), nr, block);
      }
    }
  }
  tiles.end();
}

#ifdef VGG_AMX_KERNELS
/// Whether bf16 products run on AMX tiles here, and if not, why ("" when they do). Decided once: the
/// CPU says amx_bf16, Linux grants the tile state, and a product on the tiles equals the emulated
/// one bit for bit (the self-check; VGG_AMX=0 in the environment turns AMX off).
struct AmxStatus {
  bool ready = false;
  std::string why_not;
};

inline AmxStatus amx_self_check() {
  constexpr Index m = 37, n = 45, k = 300;  // two passes, partial blocks and a partial tile
  std::vector<float> a(std::size_t(m * k)), b(std::size_t(k * n)), hw(std::size_t(m * n)), em(std::size_t(m * n));
  Rng rng(12345);
  for (float& x : a) x = rng.uniform(-1.0f, 1.0f);
  for (float& x : b) x = rng.uniform(-1.0f, 1.0f);
  struct Buffers {
    alignas(64) std::uint32_t a_pack[packed_a_size(m)];
    alignas(64) std::uint32_t b_pack[bf16::packed_b_size()];
    alignas(64) float staging[kStagingFloats];
  };
  auto buffers = std::make_unique<Buffers>();
  HardwareTiles hardware;
  gemm_on<false, false>(hardware, m, n, k, a.data(), k, b.data(), n, hw.data(), n, buffers->a_pack, buffers->b_pack,
                        buffers->staging, Epilogue{1.0f, false, nullptr, false});
  EmulatedTiles emulated;
  gemm_on<false, false>(emulated, m, n, k, a.data(), k, b.data(), n, em.data(), n, buffers->a_pack, buffers->b_pack,
                        buffers->staging, Epilogue{1.0f, false, nullptr, false});
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < hw.size(); ++i) {
    worst = std::max(worst, double(std::abs(hw[i] - em[i])));
    scale = std::max(scale, double(std::abs(em[i])));
  }
  // The tiles may order the two products of a pair differently: allow the rounding of k fp32 sums.
  if (!(worst <= double(k + 2) * 0x1p-24 * std::max(scale, 1.0)))
    return {false, "the AMX self-check differed from the emulated tiles by " + std::to_string(worst) +
                       " (largest value " + std::to_string(scale) + "): kept the vdpbf16ps kernel"};
  return {true, ""};
}

inline const AmxStatus& amx_status() {
  static const AmxStatus status = []() -> AmxStatus {
    const CpuInfo& cpu = cpu_info();
    if (!cpu.amx_bf16) return {false, "this CPU (or its OS) has no amx_bf16"};
    if (!bf16::bf16_gemm_available(cpu)) return {false, "AMX is used beside avx512_bf16 packing, which this CPU lacks"};
    if (const char* env = std::getenv("VGG_AMX"); env && std::string(env) == "0")
      return {false, "VGG_AMX=0 in the environment"};
    if (std::string why = request_amx_permission(cpu); !why.empty()) return {false, why};
    return amx_self_check();
  }();
  return status;
}
inline bool amx_ready() { return amx_status().ready; }
#else
inline bool amx_ready() { return false; }
#endif
#endif  // VGG_BF16_KERNELS

/// Which kernel takes bf16 products on this machine, for logs and reports: AMX tiles, else
/// vdpbf16ps (with why not AMX where the CPU has amx_bf16), else none.
inline std::string bf16_kernel_description() {
#ifdef VGG_BF16_KERNELS
  if (!bf16::bf16_gemm_available()) return "no bf16 kernel on this CPU";
#ifdef VGG_AMX_KERNELS
  if (amx_ready()) return "AMX-BF16 tiles (tdpbf16ps)";
  if (cpu_info().amx_bf16) return "AVX512-BF16 vdpbf16ps; AMX not used: " + amx_status().why_not;
#endif
  return "AVX512-BF16 vdpbf16ps";
#else
  return "no bf16 kernel in this build";
#endif
}

/// uint32s of the A packing buffer for bf16 products of up to m rows, on either bf16 kernel.
constexpr Index bf16_a_pack_size(Index m) {
  return std::max<Index>((m + bf16::kMr - 1) / bf16::kMr * bf16::kMr * bf16::kKc / 2, packed_a_size(m));
}
/// uint32s of the B packing buffer, on either bf16 kernel (AMX's C staging block after the panel).
constexpr Index bf16_b_pack_size() { return bf16::packed_b_size() + kStagingFloats; }

#ifdef VGG_BF16_KERNELS
/// The bf16 product the layers call: bf16::gemm's contract, run on AMX tiles where amx_ready() (A
/// packed again by rows; a_packed, the vdpbf16ps kernel's layout, is then not used) and by vdpbf16ps
/// elsewhere. requires: a_pack holds bf16_a_pack_size(m) and b_pack bf16_b_pack_size() uint32s,
/// 64-byte aligned; bf16::bf16_gemm_available().
template <bool TransA, bool TransB = false>
inline void bf16_gemm(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c,
                      Index ldc, std::uint32_t* a_pack, std::uint32_t* b_pack, const avx512::Epilogue& out,
                      const std::uint32_t* a_packed = nullptr) {
#ifdef VGG_AMX_KERNELS
  if (amx_ready()) {
    HardwareTiles tiles;
    gemm_on<TransA, TransB>(tiles, m, n, k, a, lda, b, ldb, c, ldc, a_pack, b_pack,
                            reinterpret_cast<float*>(b_pack + bf16::packed_b_size()), out);
    return;
  }
#endif
  bf16::gemm<TransA, TransB>(m, n, k, a, lda, b, ldb, c, ldc, a_pack, b_pack, out, a_packed);
}
#endif

}  // namespace vgg::cpu::amx
VGG_INTRINSICS_END
