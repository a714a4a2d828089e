// The CUDA backend on a device: CPU-vs-CUDA parity on a small network with odd sizes (parameters,
// logits, loss, every gradient, the input gradient, parameters after 3 Adam and 3 SGD steps,
// dropout masks bit for bit), staged batches (pinned, uploaded on a copy stream while the compute
// runs), cuDNN algorithms timed once per (shape, batch), no cudaMalloc or cudaMallocHost in a
// steady-state training step, and out-of-memory messages. Without a usable
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

TEST_CASE("batches staged on the device (pinned, uploaded on the copy stream) train as the CPU trains them") {
  if (no_device()) return;
  CpuNet cpu(15);
  GpuNet gpu(15);
  vgg::Adam<vgg::cpu::Backend> adam_cpu({.lr = 1e-2f, .eps = 1e-3f});
  vgg::Adam<Gpu> adam_gpu({.lr = 1e-2f, .eps = 1e-3f});
  const Batch first;
  const auto second = random_floats(first.x.size(), 16);
  std::vector<float> scratch = first.x;  // the caller's buffer: refilled as soon as stage() returns
  vgg::StagedBatch next = gpu.stage(scratch, first.labels);
  for (int step = 0; step < 4; ++step) {
    CAPTURE(step);
    const std::vector<float>& x = step % 2 ? second : first.x;
    const vgg::StagedBatch current = next;
    const auto b = vgg::train_step(gpu, adam_gpu, current);
    const auto a = vgg::train_step(cpu, adam_cpu, x, first.labels);
    CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-4));
    CHECK(std::equal(current.host_images.begin(), current.host_images.end(), x.begin()));
    scratch = step % 2 ? first.x : second;
    next = gpu.stage(scratch, first.labels);
    std::fill(scratch.begin(), scratch.end(), 1e9f);
  }
  check_tensors(tensors(cpu, false), tensors(gpu, false), 1e-4f);
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

TEST_CASE("a steady-state training step on the device allocates nothing, staged batches included") {
  if (no_device()) return;
  GpuNet net(3);
  vgg::Adam<Gpu> adam;
  const Batch data;
  const std::span<const float> x(data.x);
  const std::span<const std::int32_t> labels(data.labels);
  auto images = [&](int n) { return x.first(std::size_t(n) * GpuNet::input_shape.size()); };
  // As vgg-train runs an epoch: each batch staged after the step before it, the epoch's short last
  // batch, evaluation on staged batches; and the unstaged calls.
  auto epoch = [&] {
    vgg::StagedBatch next = net.stage(images(batch), labels);
    for (int n : {batch, 3}) {
      const vgg::StagedBatch current = next;
      (void)vgg::train_step(net, adam, current);
      next = net.stage(images(n), labels.first(std::size_t(n)));
    }
    (void)vgg::train_step(net, adam, next);
    (void)vgg::evaluate_batch(net, net.stage(images(batch), labels));
    (void)vgg::evaluate_batch(net, net.stage(images(3), labels.first(3)));
    (void)vgg::train_step(net, adam, images(batch), labels);
    (void)vgg::evaluate_batch(net, images(3), labels.first(3));
  };
  epoch();
  epoch();  // the first epoch times the algorithms of each (shape, batch) and fills both staging slots
  const long device_before = vgg::cuda::device_allocations(), pinned_before = vgg::cuda::pinned_allocations();
  for (int i = 0; i < 3; ++i) epoch();
  CHECK(vgg::cuda::device_allocations() - device_before == 0);
  CHECK(vgg::cuda::pinned_allocations() - pinned_before == 0);
  // A larger batch than ever seen must allocate, staging included: the counters watch the step.
  std::vector<float> bigger(std::size_t(2 * batch) * GpuNet::input_shape.size(), 0.5f);
  std::vector<std::int32_t> bigger_labels(std::size_t(2 * batch), 1);
  const long before_bigger = vgg::cuda::device_allocations(), pinned_before_bigger = vgg::cuda::pinned_allocations();
  (void)net.forward(net.stage(bigger, bigger_labels));
  CHECK(vgg::cuda::device_allocations() - before_bigger > 0);
  CHECK(vgg::cuda::pinned_allocations() - pinned_before_bigger > 0);
}

namespace {
/// Keeps the device busy for about `cycles` clock cycles: compute the staging must overlap.
__global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}
long long cycles_for_ms(int ms) {
  int khz = 0;
  VGG_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  return (long long)khz * ms;
}
bool stream_busy(cudaStream_t stream) {
  const cudaError_t status = cudaStreamQuery(stream);
  if (status == cudaErrorNotReady) return true;
  VGG_CUDA_CHECK(status);
  return false;
}
}  // namespace

TEST_CASE("a staged batch uploads while the compute stream is busy, and never over a batch still in use") {
  if (no_device()) return;
  GpuNet net(4);
  vgg::Adam<Gpu> adam;
  const Batch data;
  const auto other = random_floats(data.x.size(), 31);
  const vgg::StagedBatch a = net.stage(data.x, data.labels);
  (void)vgg::train_step(net, adam, a);  // slot 0, in use by the last step
  auto& transport = net.stager().transport();
  const cudaStream_t compute = net.context().stream();

  // The other slot is free: its upload runs while a long kernel occupies the compute stream.
  spin<<<1, 1, 0, compute>>>(cycles_for_ms(400));
  VGG_CUDA_CHECK_LAUNCH("spin");
  const vgg::StagedBatch b = net.stage(other, data.labels);
  CHECK(b.slot == 1);
  bool overlapped = false;
  while (stream_busy(compute))
    if (transport.upload_done(1)) {
      overlapped = true;
      break;
    }
  CHECK(overlapped);
  net.context().synchronize();

  // b's pass releases slot 0 (a's) once the work queued before it is done.
  (void)vgg::train_step(net, adam, b);
  spin<<<1, 1, 0, compute>>>(cycles_for_ms(400));
  VGG_CUDA_CHECK_LAUNCH("spin");
  (void)net.stage(data.x, data.labels);                       // slot 0: released before the spin
  const vgg::StagedBatch d = net.stage(other, data.labels);  // slot 1: b's, in use, released after the spin
  CHECK(d.slot == 1);
  CHECK(stream_busy(compute));
  CHECK_FALSE(transport.upload_done(1));  // it waits for the compute: b's buffer is never overwritten early
  net.context().synchronize();
  VGG_CUDA_CHECK(cudaStreamSynchronize(transport.copy_stream()));
  CHECK(transport.upload_done(1));
  // What arrived is the batch: the staged pass equals the direct one (eval: no dropout draws).
  net.eval();
  const auto staged_logits = net.forward(d);
  const std::vector<float> staged_copy(staged_logits.data(), staged_logits.data() + staged_logits.size());
  const auto direct = net.forward(other, batch);
  CHECK(std::memcmp(staged_copy.data(), direct.data(), staged_copy.size() * sizeof(float)) == 0);
}

TEST_CASE("cuDNN algorithms are timed once per (shape, batch), shared by layers of one shape, with an owned workspace") {
  if (no_device()) return;
  // VggBlock<3, 4, 4>: three convs of one shape, 4 -> 4 channels at 9 x 7.
  using Twin = vgg::Vgg<vgg::Input<4, 9, 7>, vgg::VggBlock<3, 4, 4>, vgg::Classifier<8, 3>>::on<Gpu>;
  const auto x = random_floats(std::size_t(batch) * Twin::input_shape.size(), 32);
  const std::vector<std::int32_t> labels{0, 1, 2, 0, 1};
  const vgg::cuda::ConvKey key{vgg::ConvShape{4, 4, 9, 7}, batch};
  Twin timed(6);
  vgg::Sgd<Gpu> sgd_timed({.lr = 0.01f});
  const auto r_timed = vgg::train_step(timed, sgd_timed, x, labels);
  auto& cache = timed.context().algorithms();
  CHECK(cache.size() == 1);  // three convs, one shape, one batch size
  const vgg::cuda::ConvAlgorithms* a = cache.find(key);
  REQUIRE(a != nullptr);
  CHECK(a->forward.measured);
  CHECK(a->backward_filter.measured);
  CHECK(a->backward_data.measured);  // the second and third convs have an input gradient
  CHECK(timed.context().workspace_bytes() >= a->workspace());
  // The heuristics alone (no timing): the same numbers to float rounding.
  Twin plain(6);
  plain.context().set_measure_algorithms(false);
  vgg::Sgd<Gpu> sgd_plain({.lr = 0.01f});
  const auto r_plain = vgg::train_step(plain, sgd_plain, x, labels);
  CHECK(r_plain.loss == doctest::Approx(r_timed.loss).epsilon(1e-5));
  REQUIRE(plain.context().algorithms().find(key) != nullptr);
  CHECK_FALSE(plain.context().algorithms().find(key)->forward.measured);
  check_tensors(tensors(plain, false), tensors(timed, false), 1e-4f);
  // Another batch size: chosen again, once.
  const auto x3 = std::span<const float>(x).first(3 * Twin::input_shape.size());
  const auto labels3 = std::span<const std::int32_t>(labels).first(3);
  (void)vgg::train_step(timed, sgd_timed, x3, labels3);
  (void)vgg::train_step(timed, sgd_timed, x3, labels3);
  CHECK(cache.size() == 2);
}

TEST_CASE("out of device memory names the bytes asked for, the bytes free and the batch size") {
  if (no_device()) return;
  vgg::cuda::Buffer<float> huge;
  CHECK_THROWS_WITH_AS(huge.reserve(std::size_t(1) << 48), doctest::Contains("bytes free"), vgg::OutOfMemoryError);
  huge.reserve(16);  // the failed allocation left the device usable
  CHECK(huge.capacity() == 16);
  // A conv layer's state names the batch size it was reserved for.
  vgg::cuda::PoolState state;
  CHECK_THROWS_WITH_AS(state.reserve(vgg::ConvShape{64, 512, 224, 224}, 1 << 20),
                       doctest::Contains("for a batch of 1048576"), vgg::OutOfMemoryError);
  // So does every buffer of the network (here its input: 2^28 samples of 3 x 13 x 11 floats).
  GpuNet net(1);
  try {
    net.reserve(1 << 28);
    FAIL("a batch of 2^28 samples fit");
  } catch (const vgg::OutOfMemoryError& e) {
    CHECK(e.batch() == (1 << 28));
    CHECK(std::string(e.what()).find("bytes free") != std::string::npos);
    CHECK(std::string(e.what()).find("for a batch of 268435456") != std::string::npos);
  }
  // The network is still usable at a batch that fits.
  const Batch data;
  CHECK(std::isfinite(vgg::evaluate_batch(net, data.x, data.labels).loss));
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

TEST_CASE("a torchvision-layout net whose adaptive pool is not the identity runs on the CUDA backend as on the CPU") {
  if (no_device()) return;
  // 1/32 width, 3x96x64: the features are 3x2, which the 7x7 adaptive pool spreads over overlapping bins.
  using Tv = vgg::torchvision::vgg11<4, 32, vgg::Input<3, 96, 64>>;
  static_assert(Tv::feature_shape.h == 3 && Tv::feature_shape.w == 2, "the adaptive pool must not be the identity here");
  Tv cpu(21);
  Tv::on<Gpu> gpu(21);
  const auto x = random_floats(std::size_t(batch) * Tv::input_shape.size(), 6);
  const std::vector<std::int32_t> labels{0, 3, 1, 2, 3};
  for (vgg::Mode mode : {vgg::Mode::eval, vgg::Mode::train}) {
    CAPTURE(mode);
    cpu.set_mode(mode);
    gpu.set_mode(mode);
    const auto a = cpu.forward(x, batch);
    const std::vector<float> cpu_logits(a.data(), a.data() + batch * Tv::num_classes);
    const auto b = gpu.forward(x, batch);
    CHECK(relative_difference(cpu_logits, {b.data(), cpu_logits.size()}) <= 1e-4f);
    CHECK(gpu.loss(labels).loss == doctest::Approx(cpu.loss(labels).loss).epsilon(1e-4));
    cpu.backward(/*input_gradient=*/true);
    gpu.backward(/*input_gradient=*/true);
    check_tensors(tensors(cpu, true), tensors(gpu, true), 1e-3f);
    CHECK(relative_difference(to_host(cpu, cpu.input_gradient()), to_host(gpu, gpu.input_gradient())) <= 1e-3f);
  }
}
