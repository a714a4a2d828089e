#pragma once
// Every benchmark report names the CPU and the kernel path that made its figures (Google Benchmark's
// context block: "cpu_model", "vgg_kernels", "vgg_caches"), since figures from the pool's two CPU kinds
// must never be compared as if from one.

#include <benchmark/benchmark.h>

#include <vgg/cpu/cpu_info.hpp>
#include <vgg/cpu/gemm_amx.hpp>
#include <vgg/default_backend.hpp>

namespace bench {

inline void add_machine_context() {
  const vgg::cpu::CpuInfo& cpu = vgg::cpu::cpu_info();
  benchmark::AddCustomContext("cpu_model", cpu.model_name + " (family " + std::to_string(cpu.family) + ", model " +
                                               std::to_string(cpu.model) + ")");
  benchmark::AddCustomContext("vgg_cpu", vgg::cpu::describe(cpu));
  benchmark::AddCustomContext("vgg_kernels", vgg::DefaultBackend::name());
  benchmark::AddCustomContext("vgg_bf16_kernel", vgg::cpu::amx::bf16_kernel_description());
}

}  // namespace bench
