#pragma once
// What the CPU this program runs on is and has: its model, the instruction sets the kernels can use
// (asked of the CPU with cpuid and of the OS with xgetbv, since a CPU feature the OS does not save
// on context switches is unusable), and its cache sizes. Read once, at first use, so that kernels
// can size their blocking from the machine instead of from constants tuned on one machine, and so
// that programs and benchmarks can say on which CPU and which kernel path their figures were made.
//
// Cache sizes come from cpuid's deterministic cache leaves (leaf 4 on Intel, 0x8000001D on AMD),
// else from Linux's sysfs (/sys/devices/system/cpu/cpu0/cache), else from conservative defaults;
// `cache_source` says which.

#include <array>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "vgg/cpu/kernel_path.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define VGG_HAVE_CPUID 1
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#endif

namespace vgg::cpu {

/// Bytes of the caches one core sees: its own L1 data and L2 caches, and the L3 it shares.
struct CacheSizes {
  long l1d = 0;
  long l2 = 0;
  long l3 = 0;
};

struct CpuInfo {
  std::string vendor;      // "GenuineIntel", "AuthenticAMD", or "" where cpuid is not available
  std::string model_name;  // the brand string, as /proc/cpuinfo's "model name" shows it
  int family = 0;          // display family and model, as /proc/cpuinfo's "cpu family" and "model"
  int model = 0;
  // Usable instruction sets: the CPU has them and the OS saves their registers.
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool avx512_fp16 = false;
  bool amx_tile = false;  // the CPU has AMX and the OS supports its state; Linux still wants each
  bool amx_bf16 = false;  // process to ask for it (arch_prctl ARCH_REQ_XCOMP_PERM) before use
  CacheSizes cache;
  const char* cache_source = "defaults";  // "cpuid", "sysfs" or "defaults"
};

namespace detail {

/// The data and unified caches one source lists, kept by level; shared by the cpuid and sysfs readers.
struct CacheLevels {
  CacheSizes sizes;
  void record(int level, long bytes) {
    if (level == 1) sizes.l1d = bytes;
    if (level == 2) sizes.l2 = bytes;
    if (level == 3) sizes.l3 = bytes;
  }
  /// Copies the sizes to out when L1d and L2 were both found.
  bool complete_into(CacheSizes& out) const {
    if (sizes.l1d <= 0 || sizes.l2 <= 0) return false;
    out = sizes;
    return true;
  }
};

#ifdef VGG_HAVE_CPUID
struct CpuidRegs {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

inline CpuidRegs cpuid(unsigned leaf, unsigned subleaf = 0) {
  CpuidRegs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) return CpuidRegs{};
  return r;
}

inline bool bit(unsigned word, int b) { return (word >> b) & 1u; }

inline std::uint64_t xgetbv0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
}

inline std::string trimmed(std::string s) {
  const auto first = s.find_first_not_of(' ');
  if (first == std::string::npos) return {};
  s.erase(0, first);
  s.erase(s.find_last_not_of(' ') + 1);
  return s;
}

/// Walks a deterministic cache-parameters leaf (Intel's 4, AMD's 0x8000001D share its layout).
inline bool caches_from_cpuid(unsigned leaf, CacheSizes& out) {
  CacheLevels found;
  for (unsigned sub = 0; sub < 16; ++sub) {
    const CpuidRegs r = cpuid(leaf, sub);
    const unsigned type = r.eax & 0x1F;  // 0: no more caches, 1: data, 2: instruction, 3: unified
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (r.eax >> 5) & 0x7;
    const long ways = long((r.ebx >> 22) & 0x3FF) + 1, partitions = long((r.ebx >> 12) & 0x3FF) + 1;
    const long line = long(r.ebx & 0xFFF) + 1, sets = long(r.ecx) + 1;
    const long bytes = ways * partitions * line * sets;
    found.record(int(level), bytes);
  }
  return found.complete_into(out);
}
#endif

/// "48K", "2048K", "32M" as sysfs writes sizes; 0 when it is none of these.
inline long parse_cache_size(const std::string& text) {
  std::istringstream in(text);
  long value = 0;
  char unit = 0;
  if (!(in >> value) || value <= 0) return 0;
  in >> unit;
  if (unit == 'K') return value << 10;
  if (unit == 'M') return value << 20;
  if (unit == 'G') return value << 30;
  return unit == 0 ? value : 0;
}

inline bool caches_from_sysfs(const std::string& dir, CacheSizes& out) {
  CacheLevels found;
  for (int index = 0; index < 16; ++index) {
    const std::string base = dir + "/index" + std::to_string(index) + "/";
    std::ifstream level_file(base + "level"), type_file(base + "type"), size_file(base + "size");
    int level = 0;
    std::string type, size;
    if (!(level_file >> level) || !(type_file >> type) || !(size_file >> size)) break;
    if (type == "Instruction") continue;
    const long bytes = parse_cache_size(size);
    found.record(int(level), bytes);
  }
  return found.complete_into(out);
}

}  // namespace detail

/// Reads the CPU now. Most callers want cpu_info(), which reads it once.
/// ensures: cache.l1d > 0 and cache.l2 > 0 (defaults of 32 KiB and 1 MiB where nothing tells).
inline CpuInfo detect_cpu() {
  CpuInfo info;
#ifdef VGG_HAVE_CPUID
  using detail::bit;
  using detail::cpuid;
  const detail::CpuidRegs leaf0 = cpuid(0);
  const unsigned max_leaf = leaf0.eax;
  std::array<char, 13> vendor{};
  for (int i = 0; i < 4; ++i) {
    vendor[std::size_t(i)] = char(leaf0.ebx >> (8 * i));
    vendor[std::size_t(4 + i)] = char(leaf0.edx >> (8 * i));
    vendor[std::size_t(8 + i)] = char(leaf0.ecx >> (8 * i));
  }
  info.vendor = vendor.data();

  const detail::CpuidRegs leaf1 = cpuid(1);
  const unsigned base_family = (leaf1.eax >> 8) & 0xF, base_model = (leaf1.eax >> 4) & 0xF;
  info.family = int(base_family == 0xF ? base_family + ((leaf1.eax >> 20) & 0xFF) : base_family);
  info.model = int(base_family == 0x6 || base_family == 0xF ? (((leaf1.eax >> 16) & 0xF) << 4) | base_model
                                                            : base_model);

  // The OS must have enabled the register state: XCR0 bits 1-2 (SSE, AVX), 5-7 (AVX-512's mask and
  // upper zmm registers), 17-18 (AMX's tile configuration and data).
  const bool osxsave = bit(leaf1.ecx, 27);
  const std::uint64_t xcr0 = osxsave ? detail::xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;

  info.fma = os_avx && bit(leaf1.ecx, 12);
  if (max_leaf >= 7) {
    const detail::CpuidRegs leaf7 = cpuid(7, 0);
    const detail::CpuidRegs leaf7_1 = cpuid(7, 1);
    info.avx2 = os_avx && bit(leaf7.ebx, 5);
    info.avx512f = os_avx512 && bit(leaf7.ebx, 16);
    info.avx512bw = info.avx512f && bit(leaf7.ebx, 30);
    info.avx512vl = info.avx512f && bit(leaf7.ebx, 31);
    info.avx512_fp16 = info.avx512f && bit(leaf7.edx, 23);
    info.avx512_bf16 = info.avx512f && bit(leaf7_1.eax, 5);
    info.amx_tile = os_amx && bit(leaf7.edx, 24);
    info.amx_bf16 = info.amx_tile && bit(leaf7.edx, 22);
  }

  const unsigned max_extended = cpuid(0x80000000).eax;
  if (max_extended >= 0x80000004) {
    std::array<char, 49> brand{};
    for (unsigned i = 0; i < 3; ++i) {
      const detail::CpuidRegs r = cpuid(0x80000002 + i);
      const unsigned words[4] = {r.eax, r.ebx, r.ecx, r.edx};
      for (int w = 0; w < 4; ++w)
        for (int b = 0; b < 4; ++b) brand[std::size_t(16 * i + 4 * w + b)] = char(words[w] >> (8 * b));
    }
    info.model_name = detail::trimmed(brand.data());
  }

  const bool amd_like = info.vendor == "AuthenticAMD" || info.vendor == "HygonGenuine";
  const bool has_topology_leaf = amd_like && max_extended >= 0x8000001D && bit(cpuid(0x80000001).ecx, 22);
  if ((!amd_like && max_leaf >= 4 && detail::caches_from_cpuid(4, info.cache)) ||
      (has_topology_leaf && detail::caches_from_cpuid(0x8000001D, info.cache)))
    info.cache_source = "cpuid";
#endif
  if (info.cache_source == std::string("defaults")) {
    if (detail::caches_from_sysfs("/sys/devices/system/cpu/cpu0/cache", info.cache))
      info.cache_source = "sysfs";
    else
      info.cache = CacheSizes{32L << 10, 1L << 20, 0};
  }
  return info;
}

/// The CPU this program runs on, read at the first call.
inline const CpuInfo& cpu_info() {
  static const CpuInfo info = detect_cpu();
  return info;
}

/// Whether this CPU can run what the kernel path was compiled for (the AVX-512 path needs AVX-512 F,
/// BW and VL; the plain path runs anywhere).
inline bool can_run(KernelPath path, const CpuInfo& info = cpu_info()) {
  return path == KernelPath::plain || (info.avx512f && info.avx512bw && info.avx512vl);
}

/// Asks Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), which a
/// process must do once before its first tile instruction (Linux 5.16 and later; the instruction
/// faults otherwise). Returns "" when granted, else why not, for the caller to print as it falls
/// back to another path.
inline std::string request_amx_permission(const CpuInfo& info = cpu_info()) {
  if (!info.amx_tile) return "this CPU (or its OS) has no AMX tiles";
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const std::string answer = [] {
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) return std::string();
    return std::string("Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: ") + std::strerror(errno) +
           "; a kernel older than 5.16, or a sandbox that forbids it)";
  }();
  return answer;
#else
  return "AMX needs Linux's arch_prctl permission, which this build has no way to ask for";
#endif
}

/// One line for logs and benchmark reports, e.g. "AMD EPYC (family 25, model 17; L1d 32 KiB, L2 1024 KiB,
/// L3 32768 KiB from cpuid; avx512 avx512_bf16)".
inline std::string describe(const CpuInfo& info = cpu_info()) {
  std::ostringstream s;
  s << (info.model_name.empty() ? std::string("unknown CPU") : info.model_name) << " (family " << info.family
    << ", model " << info.model << "; L1d " << (info.cache.l1d >> 10) << " KiB, L2 " << (info.cache.l2 >> 10)
    << " KiB";
  if (info.cache.l3 > 0) s << ", L3 " << (info.cache.l3 >> 10) << " KiB";
  s << " from " << info.cache_source << ";";
  const std::pair<bool, const char*> features[] = {{info.avx2, "avx2"},
                                                   {info.fma, "fma"},
                                                   {info.avx512f && info.avx512bw && info.avx512vl, "avx512"},
                                                   {info.avx512_bf16, "avx512_bf16"},
                                                   {info.avx512_fp16, "avx512_fp16"},
                                                   {info.amx_bf16, "amx_bf16"}};
  for (const auto& [has, name] : features)
    if (has) s << ' ' << name;
  s << ')';
  return s.str();
}

}  // namespace vgg::cpu
