#pragma once
// The one switch between the CPU backend's two kernel paths. The AVX-512 path (our GEMM kernel,
// fused epilogues, winner masks for fused pools) is compiled in when the compiler targets AVX-512
// (-march=native on such a CPU) and VGG_PLAIN_KERNELS is not defined; the plain path (Eigen's GEMM,
// separate bias, ReLU and pool passes) is compiled everywhere and is the reference every fast
// kernel is tested against. Which path runs is the backend type's choice (cpu::Backend takes the
// fastest built, cpu::PlainBackend the plain one); VGG_FAST_KERNELS only guards the intrinsics.

#if defined(__AVX512F__) && !defined(VGG_PLAIN_KERNELS)
#define VGG_FAST_KERNELS 1
#include <immintrin.h>
#endif

// GCC 12's AVX-512 intrinsics start masked and permuting operations from _mm512_undefined_*(),
// which its own -Wuninitialized / -Wmaybe-uninitialized then flag wherever they are inlined (GCC bug
// 105593, fixed in GCC 13): a consumer compiling with -Wall -Wextra would see dozens of warnings
// from our kernels. The headers that use intrinsics open and close this region around their code.
#if defined(__GNUC__) && !defined(__clang__)
#define VGG_INTRINSICS_BEGIN                                      \
  _Pragma("GCC diagnostic push")                                  \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")           \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define VGG_INTRINSICS_END _Pragma("GCC diagnostic pop")
#else
#define VGG_INTRINSICS_BEGIN
#define VGG_INTRINSICS_END
#endif

namespace vgg::cpu {

enum class KernelPath { plain, avx512 };

/// Whether the AVX-512 path is compiled into this program.
#ifdef VGG_FAST_KERNELS
inline constexpr bool kFastKernels = true;
#else
inline constexpr bool kFastKernels = false;
#endif

/// The path cpu::Backend takes: the fastest one compiled in.
inline constexpr KernelPath fastest_path = kFastKernels ? KernelPath::avx512 : KernelPath::plain;

}  // namespace vgg::cpu
