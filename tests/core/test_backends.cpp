// The seam (backend.hpp): one network type on several backends in one program, tested against each
// other. The CPU's two kernel paths must train the same net to the same numbers; a backend whose
// memory is not host memory (here a staging backend that keeps host buffers but declares them
// foreign, so every copy the network and the optimizers make for a device backend really runs)
// must give exactly the numbers of the backend it wraps. That tests the host side of a GPU
// backend's life (batch and logits copies, parameter initialisation, optimizer state) on any machine.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "reference.hpp"

namespace {

/// The plain CPU backend behind a memory wall: host_memory is false, so the network copies batches
/// in and logits out, and parameters are initialised on the host and copied over. It counts the
/// copies, so a test can tell that the wall is really crossed.
struct StagedBackend : vgg::cpu::PlainBackend {
  static constexpr bool host_memory = false;
  static constexpr const char* name() { return "staged (test)"; }
  static inline long copies_in = 0, copies_out = 0;
  static void copy_to_host(const float* src, float* dst, std::size_t count, Context& ctx) {
    ++copies_out;
    vgg::cpu::PlainBackend::copy_to_host(src, dst, count, ctx);
  }
  static void copy_from_host(const float* src, float* dst, std::size_t count, Context& ctx) {
    ++copies_in;
    vgg::cpu::PlainBackend::copy_from_host(src, dst, count, ctx);
  }
};
static_assert(vgg::Backend<StagedBackend>);

// Odd sizes: the floor rule drops a row and a column in the first pool; two blocks, one with two convs.
using Arch = vgg::Vgg<vgg::Input<2, 13, 11>, vgg::VggBlock<1, 2, 5>, vgg::VggBlock<2, 5, 7>, vgg::Classifier<12, 3>>;
static_assert(std::is_same_v<Arch::backend, vgg::cpu::Backend>, "vgg::Vgg<...> is the CPU network");
static_assert(std::is_same_v<Arch::on<vgg::cpu::Backend>, Arch>);

std::vector<float> host_copy(std::span<const float> values) { return {values.begin(), values.end()}; }

/// Everything one training step leaves: logits, loss, every gradient, then the parameters after
/// `steps` optimizer steps.
struct Trace {
  std::vector<float> logits;
  double loss = 0;
  int correct = 0;
  std::vector<std::vector<float>> grads, params;
};

template <class Net, class Optimizer>
Trace run(Optimizer optimizer, int steps) {
  auto net = std::make_unique<Net>(7);
  net->set_threads(2);
  const int batch = 5;
  const auto x = ref::random_vector(std::size_t(batch) * Net::input_shape.size(), 3);
  const std::vector<std::int32_t> labels{0, 2, 1, 1, 2};
  Trace t;
  net->train();
  const auto logits = net->forward(x, batch);
  t.logits.assign(logits.data(), logits.data() + logits.size());
  const auto r = net->loss(labels);
  t.loss = r.loss;
  t.correct = r.correct;
  net->backward();
  net->for_each_parameter([&](const vgg::ParameterView& p) { t.grads.push_back(host_copy(p.grad)); });
  for (int s = 0; s < steps; ++s) {
    if (s > 0) {
      net->forward(x, batch);
      net->loss(labels);
      net->backward();
    }
    optimizer.step(*net);
  }
  net->for_each_parameter([&](const vgg::ParameterView& p) { t.params.push_back(host_copy(p.value)); });
  return t;
}

float max_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    m = std::max(m, ref::max_abs_diff(a[i], b[i].data()));
  }
  return m;
}

}  // namespace

TEST_CASE("one network type on the CPU's two kernel paths: same logits, loss, gradients and Adam / SGD steps") {
  using Fast = Arch;
  using Plain = Arch::on<vgg::cpu::PlainBackend>;
  const Trace a = run<Fast>(vgg::Adam<vgg::cpu::Backend>({.lr = 1e-2f}), 3);
  const Trace b = run<Plain>(vgg::Adam<vgg::cpu::PlainBackend>({.lr = 1e-2f}), 3);
  CHECK(ref::max_abs_diff(a.logits, b.logits.data()) < 1e-5f);
  CHECK(a.loss == doctest::Approx(b.loss).epsilon(1e-6));
  CHECK(a.correct == b.correct);
  CHECK(max_diff(a.grads, b.grads) < 1e-5f);
  CHECK(max_diff(a.params, b.params) < 1e-4f);
  const Trace c = run<Fast>(vgg::Sgd<vgg::cpu::Backend>({.lr = 0.1f, .momentum = 0.9f}), 3);
  const Trace d = run<Plain>(vgg::Sgd<vgg::cpu::PlainBackend>({.lr = 0.1f, .momentum = 0.9f}), 3);
  CHECK(max_diff(c.params, d.params) < 1e-4f);
  // The steps moved the parameters (the comparison is not between two untouched nets).
  CHECK(max_diff(a.params, c.params) > 1e-3f);
}

TEST_CASE("a backend outside host memory gets its batches, logits and parameters through copies, exactly") {
  using Staged = Arch::on<StagedBackend>;
  using Plain = Arch::on<vgg::cpu::PlainBackend>;
  StagedBackend::copies_in = StagedBackend::copies_out = 0;
  const Trace a = run<Staged>(vgg::Adam<StagedBackend>({.lr = 1e-2f}), 3);
  CHECK(StagedBackend::copies_in > 0);   // initialisation, optimizer state, batches
  CHECK(StagedBackend::copies_out > 0);  // logits
  const Trace b = run<Plain>(vgg::Adam<vgg::cpu::PlainBackend>({.lr = 1e-2f}), 3);
  // The same kernels on the same numbers: bit-identical.
  CHECK(ref::max_abs_diff(a.logits, b.logits.data()) == 0.0f);
  CHECK(a.loss == b.loss);
  CHECK(max_diff(a.grads, b.grads) == 0.0f);
  CHECK(max_diff(a.params, b.params) == 0.0f);
}

TEST_CASE("the backend's names and the CPU context's thread cap") {
  CHECK(std::string(vgg::cpu::PlainBackend::name()) == "cpu (plain kernels)");
  vgg::cpu::Context ctx;
  ctx.set_threads(3);
  CHECK(ctx.threads() == 3);
  ctx.set_threads(100000);
  CHECK(ctx.threads() == vgg::cpu::Context::max_threads);
  ctx.set_threads(0);
  CHECK(ctx.threads() >= 1);
}

TEST_CASE("the loss checks its labels against the last forward pass") {
  auto net = std::make_unique<Arch>(1);
  const auto x = ref::random_vector(2 * Arch::input_shape.size(), 1);
  CHECK_THROWS_AS(net->loss(std::vector<std::int32_t>{0, 1}), std::logic_error);  // no forward pass yet
  net->forward(x, 2);
  CHECK_THROWS_WITH_AS(net->loss(std::vector<std::int32_t>{0}), "vgg::Vgg::loss: 1 labels for a batch of 2 samples",
                       std::invalid_argument);
  CHECK_THROWS_AS(net->loss(std::vector<std::int32_t>{0, 3}), std::invalid_argument);  // 3 classes: 0..2
  const auto r = net->loss(std::vector<std::int32_t>{0, 1}, /*gradient=*/false);
  CHECK(std::isfinite(r.loss));
}

TEST_CASE("parameters cross to and from the host in network order, whatever the backend") {
  using Staged = Arch::on<StagedBackend>;
  auto a = std::make_unique<Staged>(3);
  auto b = std::make_unique<Arch>(4);  // other weights, another backend
  std::vector<float> host(std::size_t(Arch::num_params));
  a->copy_parameters_to_host(host);
  std::size_t offset = 0;
  a->for_each_parameter([&](const vgg::ParameterView& p) {
    CHECK(std::equal(p.value.begin(), p.value.end(), host.begin() + std::ptrdiff_t(offset)));
    offset += p.value.size();
  });
  CHECK(offset == host.size());
  b->copy_parameters_from_host(host);
  const auto x = ref::random_vector(3 * Arch::input_shape.size(), 9);
  const auto la = a->forward(x, 3);
  const std::vector<float> logits_a(la.data(), la.data() + la.size());
  const auto lb = b->forward(x, 3);
  CHECK(ref::max_abs_diff(logits_a, lb.data()) < 1e-5f);  // the same weights: the same net
  host.pop_back();
  CHECK_THROWS_AS(b->copy_parameters_from_host(host), std::invalid_argument);
}

TEST_CASE_TEMPLATE("a NaN in the input reaches every logit on every CPU path, as in PyTorch", B, vgg::cpu::Backend,
                   vgg::cpu::PlainBackend) {
  // The fused ReLUs keep NaN (torch's ReLU does) and the pools propagate it: a bad pixel must not be
  // laundered into a finite loss. Two input channels, so the first conv runs the GEMM epilogue.
  auto net = std::make_unique<Arch::on<B>>(1);
  auto x = ref::random_vector(2 * Arch::input_shape.size(), 5);
  x[40] = std::nanf("");
  const auto logits = net->forward(x, 2);
  for (int c = 0; c < Arch::num_classes; ++c) CHECK(std::isnan(logits(0, c)));
  for (int c = 0; c < Arch::num_classes; ++c) CHECK(std::isfinite(logits(1, c)));  // the other sample is clean
}
