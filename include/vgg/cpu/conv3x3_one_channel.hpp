#pragma once
// AVX-512 kernels for a 3x3 convolution (stride 1, padding 1) + bias + ReLU with ONE input channel,
// the first layer of every VGG here, alone or with the following 2x2 max-pool fused in.
//
// With one input channel, im2col + GEMM is a 9-deep product whose time goes to copying and storing.
// The forward kernels keep each 16-pixel segment's nine shifted inputs in registers while they form
// every output channel from them (9 FMAs each). The fused one never writes the full-size output
// (8-64x the input, which made the layer memory-bound): it stores the pooled value and, per window,
// four bits saying which elements equal the window's maximum, all that the backward pass needs. The
// backward kernel forms the weight and bias gradients straight from those bits and the pooled
// gradient: no full-size gradient is written or read either.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

#include "vgg/cpu/gemm_avx512.hpp"
#include "vgg/cpu/maxpool.hpp"

VGG_INTRINSICS_BEGIN
namespace vgg::cpu {

#ifdef VGG_FAST_KERNELS
namespace avx512 {
/// The shifted 16-pixel input vectors that output rows r .. r + Rows - 3, pixels [x0, x0 + count),
/// read: v[3 * k + kx] is input row r - 1 + k at column offset kx - 1 (Rows = 3: one output row's
/// nine taps; 4: two rows' taps, sharing their middle input rows).
template <int Rows = 3>
inline void one_channel_taps(const float* x, int h, int w, int r, int x0, int count, __m512 v[3 * Rows]) {
  for (int ky = 0; ky < Rows; ++ky) {
    const int sy = r + ky - 1;
    for (int kx = 0; kx < 3; ++kx) {
      // Lane l reads x0 + l + kx - 1, which must lie in [0, w) (and l < count).
      const int first = x0 + kx - 1, lo = std::max(0, -first), hi = std::min(count, w - first);
      const __mmask16 m = sy >= 0 && sy < h && hi > lo ? __mmask16(first_lanes(hi) & ~first_lanes(lo)) : 0;
      v[ky * 3 + kx] = _mm512_maskz_loadu_ps(m, m ? x + long(sy) * w + first : x);  // no address outside x
    }
  }
}

/// bias + the nine taps weighted by w[0..8] (before the ReLU) as one chain of nine FMAs: the fused
/// kernel forms two rows of two channels at once, four independent chains (one_channel_pair_rows),
/// so that no operation is spent joining partial sums (the FMAs are the layer's useful work; every other vector operation
/// competes with them for the FP ports).
inline __m512 one_channel_chain(const __m512 v[9], const float* w, float bias) {
  __m512 s = _mm512_fmadd_ps(_mm512_set1_ps(w[0]), v[0], _mm512_set1_ps(bias));
  for (int k = 1; k < 9; ++k) s = _mm512_fmadd_ps(_mm512_set1_ps(w[k]), v[k], s);
  return s;
}

/// Two rows (taps top and bottom) of two channels (weights w0, w1; biases bias0, bias1): the four
/// chains of one_channel_chain in lockstep, so that consecutive FMAs are independent. Each weight
/// feeds two FMAs; read twice (the compiler cannot tell the bottom rows' pointers from the top
/// rows'), it folds into both as an embedded broadcast ({1to16}) instead of costing a vbroadcastss
/// that competes with the FMAs for the FP ports (12-13 % off conv1's forward, AMD EPYC family 25
/// model 17). The sums are one_channel_chain's, in its order.
struct ChannelPairRows {
  __m512 top0, bottom0, top1, bottom1;
};
inline ChannelPairRows one_channel_pair_rows(const __m512 top[9], const __m512 bottom[9], const float* w0,
                                             const float* w1, float bias0, float bias1) {
  const float *w0_bottom = w0, *w1_bottom = w1;
  __asm__("" : "+r"(w0_bottom), "+r"(w1_bottom));
  ChannelPairRows r{_mm512_set1_ps(bias0), _mm512_set1_ps(bias0), _mm512_set1_ps(bias1), _mm512_set1_ps(bias1)};
  for (int k = 0; k < 9; ++k) {
    r.top0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[k]), top[k], r.top0);
    r.bottom0 = _mm512_fmadd_ps(_mm512_set1_ps(w0_bottom[k]), bottom[k], r.bottom0);
    r.top1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[k]), top[k], r.top1);
    r.bottom1 = _mm512_fmadd_ps(_mm512_set1_ps(w1_bottom[k]), bottom[k], r.bottom1);
  }
  return r;
}

/// Stores 16 outputs (or the first `count`): streamed past the caches when a whole aligned line,
/// since a one-channel conv writes 8-64x more than it reads and nothing re-reads it soon.
inline void store_output(float* o, __m512 value, int count) {
  if (count == 16 && (reinterpret_cast<std::uintptr_t>(o) & 63) == 0)
    _mm512_stream_ps(o, value);
  else
    _mm512_mask_storeu_ps(o, first_lanes(count), value);
}

/// Rows [r0, r1) of y = relu(conv3x3(x) + bias) for a one-channel image x (h x w) and cout output
/// planes (y is the image's cout x h x w output); without the ReLU where Relu is false (a conv
/// before batch norm).
template <bool Relu = true>
inline void conv3x3_relu_one_channel(const float* x, const float* weight, const float* bias, float* y, int cout,
                                     int h, int w, int r0, int r1) {
  const long plane = long(h) * w;
  for (int r = r0; r < r1; ++r)
    for (int x0 = 0; x0 < w; x0 += 16) {
      const int count = std::min(16, w - x0);
      __m512 taps[9];
      one_channel_taps(x, h, w, r, x0, count, taps);
      // Two channels at a time: two independent chains (one_channel_chain) per iteration.
      // max(0, sum), in this order: MAXPS returns its second operand where one is NaN, and torch's
      // ReLU keeps NaN.
      auto output = [&](int co, __m512 sum) {
        store_output(y + co * plane + long(r) * w + x0, Relu ? _mm512_max_ps(_mm512_setzero_ps(), sum) : sum, count);
      };
      int co = 0;
      for (; co + 1 < cout; co += 2) {
        const __m512 s0 = one_channel_chain(taps, weight + co * 9, bias[co]);
        const __m512 s1 = one_channel_chain(taps, weight + co * 9 + 9, bias[co + 1]);
        output(co, s0);
        output(co + 1, s1);
      }
      if (co < cout) output(co, one_channel_chain(taps, weight + co * 9, bias[co]));
    }
  _mm_sfence();  // streamed stores are visible before the threads meet again
}

/// Pooled values (lanes 0 .. count - 1) and winner bits of one channel's segment.
struct PooledSegment {
  __m512 value;
  __mmask16 top_bits, bottom_bits;
};

/// The segment of one channel from its two rows a and b before the ReLU, window by window as PyTorch
/// (relu_pool_windows_scalar): the path of segments holding a NaN. Out of line and returned by
/// value, so that the hot loop keeps its registers (no variable of it has its address taken).
[[gnu::noinline, gnu::cold]] inline PooledSegment relu_pool_nan_segment(__m512 a, __m512 b, int count) {
  alignas(64) float top[16], bottom[16], pooled[16] = {};
  _mm512_store_ps(top, a);
  _mm512_store_ps(bottom, b);
  std::uint32_t top_word = 0, bottom_word = 0;
  relu_pool_windows_scalar(top, bottom, count, pooled, top_word, bottom_word);
  return {_mm512_load_ps(pooled), __mmask16(top_word), __mmask16(bottom_word)};
}

/// True when every input pixel that conv rows [r0, r1) read, every weight and every bias lies
/// within +-2^60: then each output (a bias plus nine products below 2^120) is finite, and no pooling
/// window can hold a NaN. One pass over the band's input: a NaN test per channel and segment in the
/// fused kernel instead made the first block's forward 12% slower (bench_blocks, 1 thread).
inline bool one_channel_outputs_finite(const float* x, const float* weight, const float* bias, int cout, int h, int w,
                                       int r0, int r1) {
  // The bits of v shifted left by one (the sign dropped) order as |v| does, unsigned, with infinity
  // and NaN above every finite value.
  __m512i largest = _mm512_setzero_si512();
  auto scan = [&](const float* p, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) largest = _mm512_max_epu32(largest, _mm512_slli_epi32(_mm512_loadu_si512(p + i), 1));
    if (i < n)
      largest = _mm512_max_epu32(largest, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(first_lanes(int(n - i)), p + i), 1));
  };
  const int first = std::max(0, r0 - 1), last = std::min(h, r1 + 1);  // a pair of rows reads one row more each side
  if (last > first) scan(x + long(first) * w, long(last - first) * w);
  scan(weight, 9L * cout);
  scan(bias, cout);
  return _mm512_reduce_max_epu32(largest) <= std::bit_cast<std::uint32_t>(0x1p60f) << 1;
}

/// The window maxima of one channel's segment from its rows a and b before the ReLU (lanes 2l and
/// 2l + 1 both hold window l's), and the winner bits: the elements equal to a positive maximum.
struct WindowMaxima {
  __m512 m;
  __mmask16 top_bits, bottom_bits;
};
inline WindowMaxima window_maxima(__m512 a, __m512 b, __mmask16 windows) {
  const __m512 column_max = _mm512_max_ps(a, b);
  const __m512 m = _mm512_max_ps(column_max, _mm512_permute_ps(column_max, 0xB1));
  // The ReLU commutes with the max, so it is taken once, on the pooled value. A winner is an element
  // equal to max(m, the least positive float), which no element of a window with m <= 0 can equal
  // (one compare fewer per channel than testing m > 0).
  const __m512 positive_max = _mm512_max_ps(m, _mm512_set1_ps(std::numeric_limits<float>::denorm_min()));
  return {m, _mm512_mask_cmp_ps_mask(windows, a, positive_max, _CMP_EQ_OQ),
          _mm512_mask_cmp_ps_mask(windows, b, positive_max, _CMP_EQ_OQ)};
}

/// Pooled rows [r0 / 2, r1 / 2) of pooled = maxpool2x2(relu(conv3x3(x) + bias)) for a one-channel
/// image x (h x w), and their winner masks (winners: cout planes of winner_plane_words(h, w)).
/// The full-size output is formed two rows at a time in registers and never stored; the window
/// maximum is taken in place (each lane pair holds it twice), so the winner bits are two compares.
/// Channels go in pairs: one permute gathers both channels' eight pooled values into one vector,
/// and one max takes their ReLU. Segments holding a NaN go as in PyTorch; they are looked for only
/// where some input or weight is not small and finite (MayHoldNaN; see one_channel_outputs_finite).
/// requires: r0 even.
template <bool MayHoldNaN>
inline void conv3x3_relu_pool_one_channel_rows(const float* x, const float* weight, const float* bias, float* pooled,
                                               std::uint32_t* winners, int cout, int h, int w, int r0, int r1) {
  const int ow = w / 2;
  const long pooled_plane = long(h / 2) * ow, row_words = winner_row_words(w), winner_plane = winner_plane_words(h, w);
  // Lanes 0-7: the windows of the first operand (its even lanes); 8-15: those of the second.
  const __m512i pair_evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  // Lanes 0-7 of the first operand as they are, then the second's windows.
  const __m512i after_staged = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 zero = _mm512_setzero_ps();
  // Whole pooled lines streamed (below) where there are many planes and the lines are aligned
  // (then every segment holds 8 whole windows, and every pair of segments one line).
  constexpr int kMaxStaged = 128;
  alignas(64) float staging[kMaxStaged * 8];
  const bool stream_lines = cout >= 32 && cout <= kMaxStaged && ow % 16 == 0 &&
                            (reinterpret_cast<std::uintptr_t>(pooled) & 63) == 0;
  for (int r = r0; r + 1 < std::min(r1, 2 * (h / 2)); r += 2) {
    for (int x0 = 0; x0 + 1 < w; x0 += 16) {
      const int count = std::min(16, w - x0), pooled_count = std::min(8, ow - x0 / 2);
      __m512 taps[12];  // the four input rows that rows r and r + 1 read: 12 registers, not 18
      one_channel_taps<4>(x, h, w, r, x0, count, taps);
      const __m512* top = taps;
      const __m512* bottom = taps + 3;
      // The two input rows that the next pair reads first: a batch's images come from memory, and
      // with few output planes (8 at width/8) there is too little work per segment to wait for them.
      for (int k = 3; k <= 4; ++k)
        if (r + k < h) _mm_prefetch(reinterpret_cast<const char*>(x + long(r + k) * w + x0), _MM_HINT_T0);
      const long at = long(r / 2) * ow + x0 / 2;
      // This segment's 8 windows are the low (x0 % 32 == 0) or high halves of the row's words.
      auto* masks = reinterpret_cast<std::uint16_t*>(winners + long(r / 2) * row_words + x0 / 32) + x0 / 16 % 2;
      const long bottom_offset = row_words;  // the bottom row's words: n uint32, i.e. row_words uint16, on
      const bool clear_next = x0 % 32 == 0 && x0 + 17 >= w;  // the last segment: clear the words' other half
      const __mmask16 store = first_lanes(pooled_count), windows = first_lanes(2 * pooled_count);
      const bool first_half = x0 % 32 == 0;
      // Channel co's segment: its maxima, its winner bits stored; a NaN's segment (MayHoldNaN) in nan.
      auto channel = [&](int co, const __m512& a, const __m512& b, bool& has_nan, PooledSegment& nan) {
        WindowMaxima s = window_maxima(a, b, windows);
        has_nan = false;
        if constexpr (MayHoldNaN) {
          if (_mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) != 0) {  // a NaN: PyTorch's choice
            nan = relu_pool_nan_segment(a, b, pooled_count);
            s.top_bits = nan.top_bits;
            s.bottom_bits = nan.bottom_bits;
            has_nan = true;
          }
        }
        std::uint16_t* out = masks + co * winner_plane * 2;
        out[0] = std::uint16_t(s.top_bits);
        out[bottom_offset] = std::uint16_t(s.bottom_bits);
        if (clear_next) out[1] = out[bottom_offset + 1] = 0;
        return s.m;
      };
      // Stores channel co's pooled values (ReLU taken), from lanes `lane` .. lane + 7 of value:
      // unstreamed, or (stream_lines, lane 8) a whole line of the staged half and value's high half.
      auto store_pooled = [&](int co, __m512 value, int lane) {
        float* dst = pooled + co * pooled_plane + at;
        if (!stream_lines) {
          // A masked store whose lanes 8-15 land at dst: the address is formed as an integer
          // (it may lie before the buffer), and masked-off lanes are never accessed.
          float* base = reinterpret_cast<float*>(reinterpret_cast<std::uintptr_t>(dst) - std::uintptr_t(lane) * 4);
          _mm512_mask_storeu_ps(base, __mmask16(store << lane), value);
        } else {
          // Many planes (64 at width 1), each written half a line per segment: a line's first half
          // waits in L1 (staging), and the whole line is streamed past the caches with the second,
          // so that no line is read for ownership first.
          _mm512_stream_ps(dst - 8, value);
        }
      };
      // A channel's pooled values in lanes 8-15 after its staged half line (a line's second half),
      // the ReLU taken on the new half only (the staged one holds it, and maybe a NaN to keep).
      auto line = [&](int co, __m512 m) {
        const __m512 joined = _mm512_permutex2var_ps(_mm512_castps256_ps512(_mm256_load_ps(staging + co * 8)), after_staged, m);
        return _mm512_mask_max_ps(joined, 0xFF00, joined, zero);
      };
      for (int co = 0; co < cout; co += 2) {
        // An odd count's last channel is paired with itself, and stored once.
        const bool pair = co + 1 < cout;
        const int c1 = pair ? co + 1 : co;
        const ChannelPairRows rows =
            one_channel_pair_rows(top, bottom, weight + co * 9, weight + c1 * 9, bias[co], bias[c1]);
        bool nan0, nan1;
        PooledSegment n0, n1;
        const __m512 m0 = channel(co, rows.top0, rows.bottom0, nan0, n0);
        const __m512 m1 = channel(c1, rows.top1, rows.bottom1, nan1, n1);
        if (stream_lines && !first_half) {
          __m512 v0 = line(co, m0);
          if (nan0) v0 = _mm512_insertf32x8(v0, _mm512_castps512_ps256(n0.value), 1);
          store_pooled(co, v0, 8);
          if (pair) {
            __m512 v1 = line(c1, m1);
            if (nan1) v1 = _mm512_insertf32x8(v1, _mm512_castps512_ps256(n1.value), 1);
            store_pooled(c1, v1, 8);
          }
        } else {
          __m512 value = _mm512_max_ps(_mm512_permutex2var_ps(m0, pair_evens, m1), zero);
          if (nan0) value = _mm512_mask_mov_ps(value, 0x00FF, n0.value);
          if (nan1) value = _mm512_insertf32x8(value, _mm512_castps512_ps256(n1.value), 1);
          if (stream_lines) {
            // Both channels' halves (co even: aligned; an odd count's last fills an unused slot).
            _mm512_store_ps(staging + co * 8, value);
          } else {
            store_pooled(co, value, 0);
            if (pair) store_pooled(c1, value, 8);
          }
        }
      }
    }
  }
  if (stream_lines) _mm_sfence();  // streamed stores are visible before the threads meet again
}

/// conv3x3_relu_pool_one_channel_rows, NaN tests only where they can find one.
inline void conv3x3_relu_pool_one_channel(const float* x, const float* weight, const float* bias, float* pooled,
                                          std::uint32_t* winners, int cout, int h, int w, int r0, int r1) {
  if (one_channel_outputs_finite(x, weight, bias, cout, h, w, r0, r1))
    conv3x3_relu_pool_one_channel_rows<false>(x, weight, bias, pooled, winners, cout, h, w, r0, r1);
  else
    conv3x3_relu_pool_one_channel_rows<true>(x, weight, bias, pooled, winners, cout, h, w, r0, r1);
}

/// Pooled rows per block of the one-channel backward kernel: its input layout (steps x 18 rows x
/// 64 floats, 32 KiB at 224 columns) then stays in L1 while every output channel reads it.
inline constexpr int kPooledRowsPerBlock = 8;
inline long split_block_words(int w) { return (kPooledRowsPerBlock * winner_row_words(w) + 15) / 16 * 16; }
/// Floats of the block's input layout (steps x rows x 4 column slots x 16), ahead of the split winners.
inline long one_channel_layout_size(int w) { return (long(w / 2) + 15) / 16 * (2 * kPooledRowsPerBlock + 2) * 64; }
inline long one_channel_scratch_size(int w) {
  return one_channel_layout_size(w) + 2 * split_block_words(w);  // input layout, 2 channels' split winners
}

/// Splits n winner words into their even and odd bits: out[q] = even_bits(words[q]) |
/// even_bits(words[q] >> 1) << 16, i.e. the left elements' 16-bit mask, then the right ones'.
/// Sixteen words per vector: splitting them step by step took integer work that the FMA loop could
/// not spare. Never inlined: its five mask constants would stay live across the caller's FMA loop
/// and push its operands out of registers.
/// requires: out holds n rounded up to 16 words.
[[gnu::noinline]] inline void split_winner_words(const std::uint32_t* words, long n, std::uint32_t* out) {
  const __m512i m1 = _mm512_set1_epi32(0x55555555), m2 = _mm512_set1_epi32(0x33333333);
  const __m512i m4 = _mm512_set1_epi32(0x0F0F0F0F), m8 = _mm512_set1_epi32(0x00FF00FF);
  const __m512i m16 = _mm512_set1_epi32(0x0000FFFF);
  // (a | b) & c is ternary-logic function 0xA8.
  auto even = [&](__m512i v) {
    v = _mm512_and_si512(v, m1);
    v = _mm512_ternarylogic_epi32(v, _mm512_srli_epi32(v, 1), m2, 0xA8);
    v = _mm512_ternarylogic_epi32(v, _mm512_srli_epi32(v, 2), m4, 0xA8);
    v = _mm512_ternarylogic_epi32(v, _mm512_srli_epi32(v, 4), m8, 0xA8);
    return _mm512_ternarylogic_epi32(v, _mm512_srli_epi32(v, 8), m16, 0xA8);
  };
  for (long k = 0; k < n; k += 16) {
    const __m512i v = _mm512_maskz_loadu_epi32(first_lanes(int(std::min(16L, n - k))), words + k);
    _mm512_storeu_si512(out + k, _mm512_or_si512(even(v), _mm512_slli_epi32(even(_mm512_srli_epi32(v, 1)), 16)));
  }
}

/// Adds to dw (cout x 9) and db (cout) the weight and bias gradients of one image of a fused
/// one-channel conv + ReLU + 2x2 pool, from its input x (h x w), the winner masks and the pooled
/// gradient dy_pooled (cout x h/2 x w/2).
/// Per output channel and 16 windows: 36 masked FMAs (9 taps x 4 window elements; each lane's winner
/// enables one of them). Their input operands, x at columns 2j + c - 1 (c = 0..3) of the
/// four input rows that a pooled row reads, are laid out once per block of pooled rows so that all
/// sixteen are loads at fixed offsets from one pointer, from L1.
/// requires: scratch holds one_channel_scratch_size(w) floats.
inline void conv3x3_relu_pool_one_channel_grads(const float* x, const std::uint32_t* winners, const float* dy_pooled,
                                                float* dw, float* db, int cout, int h, int w, float* scratch) {
  const int oh = h / 2, ow = w / 2, steps = (ow + 15) / 16;
  const long pooled_plane = long(oh) * ow, row_words = winner_row_words(w), winner_plane = winner_plane_words(h, w);
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int i0 = 0; i0 < oh; i0 += kPooledRowsPerBlock) {
    const int i1 = std::min(oh, i0 + kPooledRowsPerBlock), rows = 2 * (i1 - i0) + 2;
    // scratch[(step * rows + k) * 64 + c * 16 + l] = x[2 * i0 - 1 + k][2 * (16 * step + l) + c - 1]
    // (0 outside the image: the conv's padding).
    for (int step = 0; step < steps; ++step)
      for (int k = 0; k < rows; ++k) {
        const int r = 2 * i0 - 1 + k;
        float* out = scratch + (long(step) * rows + k) * 64;
        for (int c = 0; c < 4; ++c) {
          const int first = 32 * step + c - 1;  // lane l reads x[first + 2l]: the evens of 32 from first
          const int lo = std::max(0, -first), hi = std::clamp(w - first, 0, 32);
          const bool inside = r >= 0 && r < h && hi > lo;
          const unsigned live = inside ? (hi >= 32 ? ~0u : (1u << hi) - 1) & ~((1u << lo) - 1) : 0u;
          const float* src = inside ? x + long(r) * w + first : x;
          const __m512 v0 = _mm512_maskz_loadu_ps(__mmask16(live), src);
          const __m512 v1 = _mm512_maskz_loadu_ps(__mmask16(live >> 16), inside ? src + 16 : x);
          _mm512_storeu_ps(out + c * 16, _mm512_permutex2var_ps(v0, evens, v1));
        }
      }
    // A channel's winner words for the block, split into left/right masks (split_winner_words),
    // two channels' worth: the next channel's are split while this one computes.
    auto split_for = [&](int co) {
      return reinterpret_cast<std::uint32_t*>(scratch + one_channel_layout_size(w)) + (co % 2) * split_block_words(w);
    };
    auto split_block = [&](int co) {
      const std::uint32_t* words = winners + co * winner_plane + long(i0) * row_words;
      const long n = long(i1 - i0) * row_words;
      split_winner_words(words, n, split_for(co));
      for (long b = 0; b < n * 4; b += 64)  // the channel after is a plane away: fetch it a channel ahead
        _mm_prefetch(reinterpret_cast<const char*>(words + winner_plane) + b, _MM_HINT_T0);
    };
    split_block(0);
    for (int co = 0; co < cout; ++co) {
      // Two accumulators per tap, for the top and the bottom elements of the windows (shorter FMA
      // chains): t<ky><kx> and b<ky><kx>. Named, not an array: GCC kept an array of them in memory.
      __m512 t00, t01, t02, t10, t11, t12, t20, t21, t22, b00, b01, b02, b10, b11, b12, b20, b21, b22;
      t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = _mm512_setzero_ps();
      b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = _mm512_setzero_ps();
      __m512 bias_acc = _mm512_setzero_ps();
      const auto* split = reinterpret_cast<const std::uint16_t*>(split_for(co));
      if (co + 1 < cout) split_block(co + 1);
      for (int i = i0; i < i1; ++i) {
        const float* g_row = dy_pooled + co * pooled_plane + long(i) * ow;
        const std::uint16_t* mask_row = split + 2 * (i - i0) * row_words;  // top words, then bottom words
        for (int step = 0; step < steps; ++step) {
          // The next channel's rows are a plane away: fetch them while this one computes.
          _mm_prefetch(reinterpret_cast<const char*>(g_row + 16 * step + pooled_plane), _MM_HINT_T0);
          // Lanes past the row's end load 0: their FMAs add nothing (the padding is 0, never NaN).
          const __m512 g = _mm512_maskz_loadu_ps(first_lanes(ow - 16 * step), g_row + 16 * step);
          // Elements equal to the maximum, then the first of them wins.
          const __mmask16 left_top = mask_row[2 * step], right_top = mask_row[2 * step + 1];
          const __mmask16 left_bottom = mask_row[2 * (steps + step)], right_bottom = mask_row[2 * (steps + step) + 1];
          const __mmask16 above = _kor_mask16(left_top, right_top), left_or_above = _kor_mask16(above, left_bottom);
          const __mmask16 top_left = left_top, top_right = _kandn_mask16(left_top, right_top);
          const __mmask16 bottom_left = _kandn_mask16(above, left_bottom);
          const __mmask16 bottom_right = _kandn_mask16(left_or_above, right_bottom);
          bias_acc = _mm512_mask_add_ps(bias_acc, _kor_mask16(left_or_above, right_bottom), bias_acc, g);
          // Padded row k of the block feeds taps ky = k - 2 (i - i0) of the top elements and
          // ky - 1 of the bottom ones. Within a row, slot c (input column 2j + c - 1) feeds tap
          // kx = c of the left elements and kx = c - 1 of the right ones.
          const float* in = scratch + (long(step) * rows + 2 * (i - i0)) * 64;
          // Each row's four vectors are loaded once and feed up to 12 FMAs. The empty asm keeps
          // GCC from folding them back into the FMAs as memory operands, one load per FMA: the
          // loop was then bound by its loads (36 per step instead of 16).
          __m512 v0, v1, v2, v3;
          auto load_row = [&](const float* row) {
            v0 = _mm512_load_ps(row);
            v1 = _mm512_load_ps(row + 16);
            v2 = _mm512_load_ps(row + 32);
            v3 = _mm512_load_ps(row + 48);
            asm("" : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3));
          };
          auto taps_row = [&](__m512& a0, __m512& a1, __m512& a2, __mmask16 left, __mmask16 right) {
            a0 = _mm512_mask3_fmadd_ps(g, v0, a0, left);
            a1 = _mm512_mask3_fmadd_ps(g, v1, a1, left);
            a2 = _mm512_mask3_fmadd_ps(g, v2, a2, left);
            a0 = _mm512_mask3_fmadd_ps(g, v1, a0, right);
            a1 = _mm512_mask3_fmadd_ps(g, v2, a1, right);
            a2 = _mm512_mask3_fmadd_ps(g, v3, a2, right);
          };
          load_row(in);
          taps_row(t00, t01, t02, top_left, top_right);
          load_row(in + 64);
          taps_row(t10, t11, t12, top_left, top_right);
          taps_row(b00, b01, b02, bottom_left, bottom_right);
          load_row(in + 128);
          taps_row(t20, t21, t22, top_left, top_right);
          taps_row(b10, b11, b12, bottom_left, bottom_right);
          load_row(in + 192);
          taps_row(b20, b21, b22, bottom_left, bottom_right);
        }
      }
      const __m512 sums[9] = {_mm512_add_ps(t00, b00), _mm512_add_ps(t01, b01), _mm512_add_ps(t02, b02),
                              _mm512_add_ps(t10, b10), _mm512_add_ps(t11, b11), _mm512_add_ps(t12, b12),
                              _mm512_add_ps(t20, b20), _mm512_add_ps(t21, b21), _mm512_add_ps(t22, b22)};
      for (int t = 0; t < 9; ++t) dw[co * 9 + t] += _mm512_reduce_add_ps(sums[t]);
      db[co] += _mm512_reduce_add_ps(bias_acc);
    }
  }
}

}  // namespace avx512
#endif

}  // namespace vgg::cpu
VGG_INTRINSICS_END
