#pragma once
// Seeded, platform-independent random numbers. std::mt19937 + std::uniform_real_distribution
// differ between standard libraries; these are fully specified here, so a seed means the same
// weights and dropout masks everywhere.

#include <cstdint>

namespace vgg {

/// The SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijection on 64-bit values.
constexpr std::uint64_t splitmix64_finalize(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// One SplitMix64 step from state z: used both as a stream and as a counter hash.
constexpr std::uint64_t mix64(std::uint64_t z) { return splitmix64_finalize(z + 0x9e3779b97f4a7c15ULL); }

/// Uniform float in [0, 1) from the top 24 bits (every value exactly representable).
constexpr float unit_float(std::uint64_t bits) { return float(bits >> 40) * (1.0f / 16777216.0f); }

/// A sequential generator (SplitMix64); cheap to copy, deterministic for a seed. Used for
/// initialisation and, through below(), for the data order of every epoch.
class Rng {
 public:
  explicit constexpr Rng(std::uint64_t seed) : state_(seed) {}
  constexpr std::uint64_t next() {
    const std::uint64_t z = state_;
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(z);
  }
  /// Uniform in [lo, hi).
  constexpr float uniform(float lo, float hi) { return lo + (hi - lo) * unit_float(next()); }

  /// requires: bound > 0.  ensures: a uniform value in [0, bound), without modulo bias (outputs
  /// below 2^64 mod bound are rejected).
  constexpr std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  std::uint64_t state_;
};

/// Counter-based draw: the i-th value of stream (seed, stream) without sequential state, so that
/// any thread can compute any element (dropout masks, independent of the thread count).
constexpr std::uint64_t hash_draw(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  return mix64(mix64(seed ^ mix64(stream)) + i);
}

}  // namespace vgg
