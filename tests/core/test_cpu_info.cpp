// The CPU as cpu_info() reads it (cpuid, xgetbv) against what Linux says of the same CPU
// (/proc/cpuinfo, sysfs): two independent readings that must agree. Skipped where Linux's files
// are absent (not Linux, or a sandbox without /proc).
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "vgg/cpu/cpu_info.hpp"

namespace {

/// The first processor's "key: value" lines of /proc/cpuinfo; empty when it cannot be read.
std::map<std::string, std::string> first_processor() {
  std::map<std::string, std::string> fields;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) break;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon), value = line.substr(colon + 1);
    key.erase(key.find_last_not_of(" \t") + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    fields[key] = value;
  }
  return fields;
}

std::set<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::set<std::string> out;
  for (std::string w; in >> w;) out.insert(w);
  return out;
}

}  // namespace

TEST_CASE("sysfs cache sizes parse as Linux writes them") {
  using vgg::cpu::detail::parse_cache_size;
  CHECK(parse_cache_size("48K") == 48L << 10);
  CHECK(parse_cache_size("2048K") == 2048L << 10);
  CHECK(parse_cache_size("32M") == 32L << 20);
  CHECK(parse_cache_size("512") == 512);
  CHECK(parse_cache_size("") == 0);
  CHECK(parse_cache_size("-1K") == 0);
  CHECK(parse_cache_size("12Q") == 0);
}

TEST_CASE("cpu_info agrees with /proc/cpuinfo on the model and the instruction sets") {
  const auto fields = first_processor();
  if (fields.empty() || !fields.count("flags")) {
    MESSAGE("VGG_SKIPPED: /proc/cpuinfo has no x86 flags line here");
    return;
  }
  const vgg::cpu::CpuInfo& info = vgg::cpu::cpu_info();
  CHECK(info.vendor == fields.at("vendor_id"));
  CHECK(info.family == std::stoi(fields.at("cpu family")));
  CHECK(info.model == std::stoi(fields.at("model")));
  CHECK(info.model_name == fields.at("model name"));
  const auto flags = words(fields.at("flags"));
  CHECK(info.avx2 == flags.count("avx2"));
  CHECK(info.fma == flags.count("fma"));
  CHECK(info.avx512f == flags.count("avx512f"));
  CHECK(info.avx512bw == flags.count("avx512bw"));
  CHECK(info.avx512vl == flags.count("avx512vl"));
  CHECK(info.avx512_bf16 == flags.count("avx512_bf16"));
  CHECK(info.avx512_fp16 == flags.count("avx512_fp16"));
  CHECK(info.amx_tile == flags.count("amx_tile"));
  CHECK(info.amx_bf16 == flags.count("amx_bf16"));
  MESSAGE("this CPU: " << vgg::cpu::describe(info));
}

TEST_CASE("cpu_info's cache sizes agree with sysfs") {
  vgg::cpu::CacheSizes sysfs;
  if (!vgg::cpu::detail::caches_from_sysfs("/sys/devices/system/cpu/cpu0/cache", sysfs)) {
    MESSAGE("VGG_SKIPPED: no cache sizes in sysfs here");
    return;
  }
  const vgg::cpu::CpuInfo& info = vgg::cpu::cpu_info();
  CHECK(info.cache.l1d == sysfs.l1d);
  CHECK(info.cache.l2 == sysfs.l2);
  CHECK(info.cache.l3 == sysfs.l3);
}

TEST_CASE("the kernel path this program was built with can run on this CPU") {
  // The program is running its fast kernels' code right now if it was built with them; a
  // cpu_info() that says otherwise is wrong.
  CHECK(vgg::cpu::can_run(vgg::cpu::KernelPath::plain));
  if (vgg::cpu::kFastKernels) CHECK(vgg::cpu::can_run(vgg::cpu::KernelPath::avx512));
  vgg::cpu::CpuInfo no_avx512;
  CHECK_FALSE(vgg::cpu::can_run(vgg::cpu::KernelPath::avx512, no_avx512));
  const std::string line = vgg::cpu::describe();
  CHECK(line.find(vgg::cpu::cpu_info().model_name) == 0);
  CHECK(line.find("L2 " + std::to_string(vgg::cpu::cpu_info().cache.l2 >> 10) + " KiB") != std::string::npos);
}

TEST_CASE("AMX is granted, or refused with a reason") {
  const std::string refusal = vgg::cpu::request_amx_permission();
  if (!vgg::cpu::cpu_info().amx_tile) {
    // Nothing to grant: the refusal says so instead of letting a tile instruction fault.
    CHECK(refusal.find("no AMX") != std::string::npos);
    // Not a skip of the whole executable (its other cases ran): the granting path waits for an AMX CPU.
    MESSAGE("no AMX on this CPU: only the refusal was checked, not a grant");
    return;
  }
  if (!refusal.empty()) MESSAGE("AMX refused here: " << refusal);
  CHECK(vgg::cpu::request_amx_permission() == refusal);  // asked once, the answer kept
}
