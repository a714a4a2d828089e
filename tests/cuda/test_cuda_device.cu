// The CUDA backend on a device: CPU-vs-CUDA parity on a small network with odd sizes (parameters,
// logits, loss, every gradient, the input gradient, parameters after 3 Adam and 3 SGD steps,
// dropout masks bit for bit), and no cudaMalloc in a steady-state training step. Without a usable
// CUDA device the suite prints a VGG_SKIPPED line, which CTest reports as a skipped test.
#include <doctest/doctest.h>

#include <vgg/cuda.hpp>
#if defined(VGG_TEST_HAVE_IO)
#include <vgg/io/checkpoint.hpp>

#include <filesystem>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "compare.hpp"

namespace {

bool no_device() {
  const std::string problem = vgg::cuda::device_problem();
  if (problem.empty()) return false;
  // Matched by the test's SKIP_REGULAR_EXPRESSION.
  std::printf("VGG_SKIPPED: %s\n", problem.c_str());
  return true;
}

// Odd sizes everywhere: 13 x 11 pools to 6 x 5, then to 3 x 2 (the floor rule drops a row and a
// column each time); a batch of 5; a fused two-conv block.
using Arch = vgg::Vgg<vgg::Input<3, 13, 11>, vgg::VggBlock<2, 3, 5>, vgg::VggBlock<1, 5, 6>, vgg::Classifier<19, 4, 0.5>>;
using CpuNet = Arch;
using GpuNet = Arch::on<vgg::cuda::Backend>;
using Gpu = vgg::cuda::Backend;
constexpr int batch = 5;

std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  vgg::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform(lo, hi);
  return v;
}

template <class Net>
std::vector<float> to_host(Net& net, std::span<const float> values) {
  std::vector<float> host(values.size());
  Net::backend::copy_to_host(values.data(), host.data(), values.size(), net.context());
  return host;
}

/// Every parameter tensor (or its gradient) of `net`, copied to the host, in network order.
template <class Net>
std::vector<std::vector<float>> tensors(Net& net, bool gradients) {
  std::vector<std::vector<float>> all;
  net.for_each_parameter([&](const vgg::ParameterView& p) { all.push_back(to_host(net, gradients ? p.grad : p.value)); });
  return all;
}


void check_tensors(const std::vector<std::vector<float>>& cpu, const std::vector<std::vector<float>>& gpu, float tol) {
  REQUIRE(cpu.size() == gpu.size());
  for (std::size_t t = 0; t < cpu.size(); ++t) {
    CAPTURE(t);
    CHECK(relative_difference(cpu[t], gpu[t]) <= tol);
  }
}

struct Batch {
  std::vector<float> x = random_floats(std::size_t(batch) * CpuNet::input_shape.size(), 5);
  std::vector<std::int32_t> labels{0, 3, 1, 2, 3};
};

}  // namespace

TEST_CASE("a network on the CUDA backend computes what the CPU network computes") {
  if (no_device()) return;
  CpuNet cpu(11);
  GpuNet gpu(11);
  check_tensors(tensors(cpu, false), tensors(gpu, false), 0.0f);  // drawn on the host, copied: equal

  const Batch data;
  for (vgg::Mode mode : {vgg::Mode::eval, vgg::Mode::train}) {
    CAPTURE(mode);
    cpu.set_mode(mode);
    gpu.set_mode(mode);
    const auto logits_cpu = cpu.forward(data.x, batch);
    const std::vector<float> cpu_copy(logits_cpu.data(), logits_cpu.data() + batch * CpuNet::num_classes);
    const auto logits_gpu = gpu.forward(data.x, batch);
    CHECK(relative_difference(cpu_copy, {logits_gpu.data(), cpu_copy.size()}) <= 1e-4f);
    const vgg::LossResult loss_cpu = cpu.loss(data.labels);
    const vgg::LossResult loss_gpu = gpu.loss(data.labels);
    CHECK(loss_gpu.loss == doctest::Approx(loss_cpu.loss).epsilon(1e-4));
    CHECK(loss_gpu.correct == loss_cpu.correct);
    CHECK(relative_difference(to_host(cpu, cpu.output_gradient()), to_host(gpu, gpu.output_gradient())) <= 1e-4f);
    cpu.backward(/*input_gradient=*/true);
    gpu.backward(/*input_gradient=*/true);
    check_tensors(tensors(cpu, true), tensors(gpu, true), 1e-3f);
    CHECK(relative_difference(to_host(cpu, cpu.input_gradient()), to_host(gpu, gpu.input_gradient())) <= 1e-3f);
  }
  CHECK_THROWS_AS(gpu.loss(std::vector<std::int32_t>{0, 1, 4, 0, 0}), std::invalid_argument);  // label 4 of 4 classes
}

TEST_CASE("3 Adam steps and 3 SGD steps on the CUDA backend leave the CPU's parameters") {
  if (no_device()) return;
  const Batch data;
  {
    CpuNet cpu(12);
    GpuNet gpu(12);
    // eps well above float noise: the first Adam steps are lr * sign(g), which a gradient that is
    // rounding noise on one device would flip.
    const vgg::AdamOptions options{.lr = 1e-2f, .eps = 1e-3f, .weight_decay = 1e-3f};
    vgg::Adam<vgg::cpu::Backend> adam_cpu(options);
    vgg::Adam<Gpu> adam_gpu(options);
    for (int step = 0; step < 3; ++step) {
      const auto a = vgg::train_step(cpu, adam_cpu, data.x, data.labels);
      const auto b = vgg::train_step(gpu, adam_gpu, data.x, data.labels);
      CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-4));
    }
    check_tensors(tensors(cpu, false), tensors(gpu, false), 1e-4f);
    CHECK(relative_difference(to_host(cpu, adam_cpu.second_moment()), to_host(gpu, adam_gpu.second_moment())) <= 1e-3f);
  }
  {
    CpuNet cpu(13);
    GpuNet gpu(13);
    const vgg::SgdOptions options{.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-3f, .nesterov = true};
    vgg::Sgd<vgg::cpu::Backend> sgd_cpu(options);
    vgg::Sgd<Gpu> sgd_gpu(options);
    for (int step = 0; step < 3; ++step) {
      const auto a = vgg::train_step(cpu, sgd_cpu, data.x, data.labels);
      const auto b = vgg::train_step(gpu, sgd_gpu, data.x, data.labels);
      CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-4));
    }
    check_tensors(tensors(cpu, false), tensors(gpu, false), 1e-4f);
  }
}

TEST_CASE("dropout masks on the device are the CPU's, bit for bit") {
  if (no_device()) return;
  vgg::cuda::Context ctx;
  vgg::cpu::Context host;
  const long count = 4097;
  const auto x = random_floats(std::size_t(count), 14);
  std::vector<float> expected(x.size()), found(x.size());
  vgg::cuda::Buffer<float> in(x.size()), out(x.size());
  Gpu::copy_from_host(x.data(), in.data(), x.size(), ctx);
  for (std::uint64_t stream : {0u, 1u, 1025u}) {
    vgg::cpu::Backend::dropout_forward(host, x.data(), expected.data(), count, 0.5f, 77, stream);
    Gpu::dropout_forward(ctx, in.data(), out.data(), count, 0.5f, 77, stream);
    Gpu::copy_to_host(out.data(), found.data(), found.size(), ctx);
    CHECK(std::memcmp(expected.data(), found.data(), x.size() * sizeof(float)) == 0);
  }
  CHECK(Gpu::all_finite(ctx, in.data(), x.size()));
}

TEST_CASE("a steady-state training step on the device calls no cudaMalloc") {
  if (no_device()) return;
  GpuNet net(3);
  vgg::Adam<Gpu> adam;
  const Batch data;
  const std::span<const float> x(data.x);
  const std::span<const std::int32_t> labels(data.labels);
  auto step = [&](int n) {
    (void)vgg::train_step(net, adam, x.first(std::size_t(n) * GpuNet::input_shape.size()), labels.first(std::size_t(n)));
    (void)vgg::evaluate_batch(net, x.first(std::size_t(n) * GpuNet::input_shape.size()), labels.first(std::size_t(n)));
  };
  step(batch);
  step(3);  // a smaller batch (an epoch's last) makes its cuDNN plans once
  const long before = vgg::cuda::device_allocations();
  for (int i = 0; i < 3; ++i) {
    step(batch);
    step(3);
  }
  CHECK(vgg::cuda::device_allocations() - before == 0);
  // A larger batch than ever seen must allocate: proves the counter watches the step.
  std::vector<float> bigger(std::size_t(2 * batch) * GpuNet::input_shape.size(), 0.5f);
  const long before_bigger = vgg::cuda::device_allocations();
  (void)net.forward(bigger, 2 * batch);
  CHECK(vgg::cuda::device_allocations() - before_bigger > 0);
}

TEST_CASE("out of device memory names the bytes asked for, the bytes free and the batch size") {
  if (no_device()) return;
  vgg::cuda::Buffer<float> huge;
  CHECK_THROWS_WITH_AS(huge.reserve(std::size_t(1) << 48), doctest::Contains("bytes free"), std::runtime_error);
  huge.reserve(16);  // the failed allocation left the device usable
  CHECK(huge.capacity() == 16);
  // A conv layer's state names the batch size it was reserved for.
  vgg::cuda::PoolState state;
  CHECK_THROWS_WITH_AS(state.reserve(vgg::ConvShape{64, 512, 224, 224}, 1 << 20),
                       doctest::Contains("for a batch of 1048576"), std::runtime_error);
}

#if defined(VGG_TEST_HAVE_IO)
TEST_CASE("checkpoints move between the CUDA and the CPU networks, and a CUDA training run resumes") {
  if (no_device()) return;
  const auto dir = std::filesystem::temp_directory_path() / "vgg_test_cuda_device";
  std::filesystem::create_directories(dir);
  const Batch data;
  GpuNet gpu(21);
  vgg::Adam<Gpu> adam({.lr = 1e-2f});
  (void)vgg::train_step(gpu, adam, data.x, data.labels);
  // Weights written from the device load into a CPU network unchanged, and back.
  vgg::io::save_weights(dir / "weights.safetensors", gpu);
  CpuNet cpu(0);
  vgg::io::load_weights(dir / "weights.safetensors", cpu);
  check_tensors(tensors(gpu, false), tensors(cpu, false), 0.0f);
  GpuNet back(0);
  vgg::io::load_weights(dir / "weights.safetensors", back);
  check_tensors(tensors(gpu, false), tensors(back, false), 0.0f);
  // A training checkpoint: the resumed run's next step equals the uninterrupted one's.
  vgg::io::save_training_checkpoint(dir / "train.safetensors", gpu, adam, {.epoch = 1, .network_step = 1, .metadata = {}});
  GpuNet resumed(0);
  vgg::Adam<Gpu> resumed_adam({.lr = 1e-2f});
  const auto state = vgg::io::load_training_checkpoint(dir / "train.safetensors", resumed, resumed_adam);
  CHECK(state.epoch == 1);
  CHECK(resumed.step() == gpu.step());
  (void)vgg::train_step(gpu, adam, data.x, data.labels);
  (void)vgg::train_step(resumed, resumed_adam, data.x, data.labels);
  check_tensors(tensors(gpu, false), tensors(resumed, false), 1e-6f);
  std::filesystem::remove_all(dir);
}
#endif

TEST_CASE("batch norm on the CUDA backend: train and eval passes, SGD steps and running statistics as on the CPU") {
  if (no_device()) return;
  using BnArch = vgg::Vgg<vgg::Input<3, 13, 11>, vgg::VggBlock<2, 3, 5, vgg::BatchNorm>,
                          vgg::VggBlock<1, 5, 6, vgg::BatchNorm>, vgg::Classifier<19, 4, 0.0>>;
  BnArch cpu(14);
  BnArch::on<Gpu> gpu(14);
  const Batch data;
  auto state = [](auto& net) {
    std::vector<float> all;
    net.for_each_state([&](const vgg::StateView& s) {
      const auto host = to_host(net, s.value);
      all.insert(all.end(), host.begin(), host.end());
    });
    return all;
  };
  for (vgg::Mode mode : {vgg::Mode::train, vgg::Mode::eval}) {
    CAPTURE(mode);
    cpu.set_mode(mode);
    gpu.set_mode(mode);
    const auto a = cpu.forward(data.x, batch);
    const std::vector<float> cpu_logits(a.data(), a.data() + batch * BnArch::num_classes);
    const auto b = gpu.forward(data.x, batch);
    CHECK(relative_difference(cpu_logits, {b.data(), cpu_logits.size()}) <= 1e-4f);
    CHECK(gpu.loss(data.labels).loss == doctest::Approx(cpu.loss(data.labels).loss).epsilon(1e-4));
    cpu.backward(true);
    gpu.backward(true);
    const auto cpu_grads = tensors(cpu, true), gpu_grads = tensors(gpu, true);
    REQUIRE(cpu_grads.size() == 18);  // per conv: weight, bias, gamma, beta; then 3 linear layers
    for (std::size_t t = 0; t < cpu_grads.size(); ++t) {
      CAPTURE(t);
      if (mode == vgg::Mode::train && t < 12 && t % 4 == 1) {
        // A conv bias before a norm: its gradient is 0 in exact arithmetic, rounding noise on
        // either device; bounded against its conv weight's gradient instead of compared.
        float noise = 0.0f, scale = 0.0f;
        for (float g : gpu_grads[t]) noise = std::max(noise, std::abs(g));
        for (float g : gpu_grads[t - 1]) scale = std::max(scale, std::abs(g));
        CHECK(noise <= 1e-5f * scale);
      } else {
        CHECK(relative_difference(cpu_grads[t], gpu_grads[t]) <= 1e-3f);
      }
    }
    CHECK(relative_difference(to_host(cpu, cpu.input_gradient()), to_host(gpu, gpu.input_gradient())) <= 1e-3f);
    CHECK(relative_difference(state(cpu), state(gpu)) <= 1e-5f);
  }
  vgg::Sgd<vgg::cpu::Backend> sgd_cpu({.lr = 0.05f, .momentum = 0.9f});
  vgg::Sgd<Gpu> sgd_gpu({.lr = 0.05f, .momentum = 0.9f});
  for (int step = 0; step < 3; ++step) {
    const auto a = vgg::train_step(cpu, sgd_cpu, data.x, data.labels);
    const auto b = vgg::train_step(gpu, sgd_gpu, data.x, data.labels);
    CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-4));
  }
  check_tensors(tensors(cpu, false), tensors(gpu, false), 1e-4f);
  CHECK(relative_difference(state(cpu), state(gpu)) <= 1e-4f);
  cpu.for_each_counter([](const vgg::CounterView& c) { CHECK(*c.value == 4); });
  gpu.for_each_counter([](const vgg::CounterView& c) { CHECK(*c.value == 4); });
  // Steady state: a training step, an eval batch and its backward call no cudaMalloc.
  (void)vgg::evaluate_batch(gpu, data.x, data.labels);
  gpu.backward();
  const long before = vgg::cuda::device_allocations();
  (void)vgg::train_step(gpu, sgd_gpu, data.x, data.labels);
  (void)vgg::evaluate_batch(gpu, data.x, data.labels);
  gpu.backward();
  CHECK(vgg::cuda::device_allocations() - before == 0);
}
