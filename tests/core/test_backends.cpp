// The seam (backend.hpp): one network type on several backends in one program, tested against each
// other. The CPU's two kernel paths must train the same net to the same numbers; a backend whose
// memory is not host memory (here a staging backend that keeps host buffers but declares them
// foreign, so every copy the network and the optimizers make for a device backend really runs)
// must give exactly the numbers of the backend it wraps. That tests the host side of a GPU
// backend's life (batch and logits copies, parameter initialisation, optimizer state) on any machine.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

/// Batch staging as a device backend does it (staging.hpp), over B's copies: host slots, slots in
/// B's memory, and an upload per staged batch. The ordering primitives are no-ops here (one
/// queue); StagingLog below checks the order BatchStaging calls them in.
template <class B>
struct CopyTransport {
  using Context = typename B::Context;
  static constexpr bool copies = true;
  void wait_host_free(Context&, int) {}
  void reserve(Context&, int slot, std::size_t floats, std::size_t labels) {
    if (host[slot].size() < floats) host[slot].resize(floats);
    if (label_slots[slot].size() < labels) label_slots[slot].resize(labels);
    device[slot].reserve(floats);
  }
  float* host_images(int slot) { return host[slot].data(); }
  std::int32_t* host_labels(int slot) { return label_slots[std::size_t(slot)].data(); }
  const float* device_images(int slot) { return device[slot].data(); }
  void upload(Context& ctx, int slot, std::size_t floats) {
    B::copy_from_host(host[slot].data(), device[slot].data(), floats, ctx);
  }
  void compute_waits_for(Context&, int) {}
  void release_after_queued(Context&, int) {}

  std::array<std::vector<float>, 2> host;
  std::array<std::vector<std::int32_t>, 2> label_slots;
  std::array<typename B::template Buffer<float>, 2> device;
};

/// The plain CPU backend behind a memory wall: host_memory is false, so the network copies batches
/// in and logits out, and parameters are initialised on the host and copied over. It counts the
/// copies, so a test can tell that the wall is really crossed.
struct StagedBackend : vgg::cpu::PlainBackend {
  using BatchStager = vgg::BatchStaging<CopyTransport<StagedBackend>>;
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

// The AVX-512 Adam loop (cpu/adam.hpp) against elementwise::adam, the per-element reference every
// backend shares: lengths around the 16-lane vectors (masked tails), threads splitting at odd places,
// weight decay on and off, three steps. The two may round differently only where the compiler
// contracts the scalar code into FMAs: within a few ulp.
TEST_CASE("the CPU's Adam update matches the per-element reference, tails and threads included" *
          doctest::skip(!vgg::cpu::kFastKernels)) {
  vgg::cpu::Context ctx;
  ctx.set_threads(2);
  for (const long count : {1L, 15L, 16L, 17L, 100L, 65536L + 33L})
    for (const float weight_decay : {0.0f, 0.01f}) {
      CAPTURE(count);
      CAPTURE(weight_decay);
      auto p = ref::random_vector(std::size_t(count), 1), g = ref::random_vector(std::size_t(count), 2),
           m = ref::random_vector(std::size_t(count), 3), v = ref::random_vector(std::size_t(count), 4);
      for (float& e : v) e = std::abs(e);
      auto p_ref = p, m_ref = m, v_ref = v;
      for (int t = 1; t <= 3; ++t) {
        const vgg::AdamStep step{1e-3f / (1.0f - std::pow(0.9f, float(t))), 0.9f, 0.999f,
                                 std::sqrt(1.0f - std::pow(0.999f, float(t))), 1e-8f, weight_decay};
        vgg::cpu::Backend::adam_update(ctx, p.data(), g.data(), m.data(), v.data(), std::size_t(count), step);
        for (long i = 0; i < count; ++i) vgg::elementwise::adam(p_ref[std::size_t(i)], g[std::size_t(i)],
                                                                 m_ref[std::size_t(i)], v_ref[std::size_t(i)], step);
      }
      // Errors against the size of the terms (all of order 1 here): a few ulp of 1.
      const auto p0 = ref::random_vector(std::size_t(count), 1);
      float worst_p = 0.0f, worst_m = 0.0f, worst_v = 0.0f, moved = 0.0f;
      for (long i = 0; i < count; ++i) {
        const std::size_t k = std::size_t(i);
        worst_p = std::max(worst_p, std::abs(p[k] - p_ref[k]) / std::max(std::abs(p_ref[k]), 1.0f));
        worst_m = std::max(worst_m, std::abs(m[k] - m_ref[k]) / std::max(std::abs(m_ref[k]), 1.0f));
        worst_v = std::max(worst_v, std::abs(v[k] - v_ref[k]) / std::max(std::abs(v_ref[k]), 1.0f));
        moved = std::max(moved, std::abs(p[k] - p0[k]));
      }
      CHECK(worst_p <= 1e-6f);
      CHECK(worst_m <= 1e-6f);
      CHECK(worst_v <= 1e-6f);
      CHECK(moved > 1e-5f);  // not vacuous: the update did move the parameters (by up to 3 lr)
    }
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

namespace {

/// A transport that logs every call: the order in which BatchStaging orders uploads and compute.
struct StagingLog {
  using Context = vgg::cpu::Context;
  static constexpr bool copies = true;
  void wait_host_free(Context&, int slot) { log.push_back("host free " + std::to_string(slot)); }
  void reserve(Context&, int slot, std::size_t floats, std::size_t labels) {
    log.push_back("reserve " + std::to_string(slot) + " " + std::to_string(floats) + " " + std::to_string(labels));
    host[slot].resize(std::max(host[slot].size(), floats));
    label_slots[slot].resize(std::max(label_slots[slot].size(), labels));
    device[slot].resize(std::max(device[slot].size(), floats));
  }
  float* host_images(int slot) { return host[slot].data(); }
  std::int32_t* host_labels(int slot) { return label_slots[std::size_t(slot)].data(); }
  const float* device_images(int slot) { return device[slot].data(); }
  void upload(Context&, int slot, std::size_t floats) {
    log.push_back("upload " + std::to_string(slot));
    std::copy(host[slot].begin(), host[slot].begin() + std::ptrdiff_t(floats), device[slot].begin());
  }
  void compute_waits_for(Context&, int slot) { log.push_back("compute waits " + std::to_string(slot)); }
  void release_after_queued(Context&, int slot) { log.push_back("release " + std::to_string(slot)); }

  std::vector<std::string> take() { return std::exchange(log, {}); }
  std::vector<std::string> log;
  std::array<std::vector<float>, 2> host, device;
  std::array<std::vector<std::int32_t>, 2> label_slots;
};
using Log = std::vector<std::string>;

}  // namespace

TEST_CASE("batch staging: slots in turn, uploads after the compute released the slot, stale batches refused") {
  vgg::BatchStaging<StagingLog> stager;
  vgg::cpu::Context ctx;
  auto& t = stager.transport();
  std::vector<float> x{1, 2, 3, 4, 5, 6};
  std::vector<std::int32_t> labels{7, 8};

  const vgg::StagedBatch a = stager.stage(ctx, x, labels, 3);
  CHECK(t.take() == Log{"host free 0", "reserve 0 6 2", "upload 0"});
  CHECK(a.slot == 0);
  CHECK(a.size == 2);
  CHECK(a.images == t.device[0].data());
  x[0] = -1;  // the caller's buffer is free again: the staged copy keeps the batch
  labels[0] = 0;
  CHECK(a.host_images[0] == 1.0f);
  CHECK(a.labels[0] == 7);
  CHECK(t.device[0][0] == 1.0f);

  CHECK(stager.acquire(ctx, a) == t.device[0].data());
  CHECK(t.take() == Log{"compute waits 0"});  // slot 1 was never used: nothing to release

  const vgg::StagedBatch b = stager.stage(ctx, x, labels, 3);
  CHECK(t.take() == Log{"host free 1", "reserve 1 6 2", "upload 1"});
  CHECK(b.slot == 1);
  CHECK(b.ticket > a.ticket);
  (void)stager.acquire(ctx, b);
  // b's pass is queued after a's: slot 0 may be refilled once the work queued so far is done.
  CHECK(t.take() == Log{"compute waits 1", "release 0"});

  const vgg::StagedBatch c = stager.stage(ctx, x, labels, 3);
  CHECK(t.take() == Log{"host free 0", "reserve 0 6 2", "upload 0"});  // released already
  CHECK(c.slot == 0);
  CHECK_FALSE(stager.current(a));
  CHECK(stager.current(b));
  CHECK_THROWS_WITH_AS(stager.acquire(ctx, a), doctest::Contains("overwritten by a later stage()"), std::logic_error);
  CHECK(t.take().empty());

  // Staging into b's slot while b is in use and c was never acquired: the slot is released after
  // everything queued so far (b's whole step), before it is refilled.
  const vgg::StagedBatch d = stager.stage(ctx, x, labels, 3);
  CHECK(t.take() == Log{"release 1", "host free 1", "reserve 1 6 2", "upload 1"});
  CHECK(d.slot == 1);
  CHECK_FALSE(stager.current(b));
  CHECK(stager.current(c));

  // Wrong sizes are refused before anything is touched; the next slot stays the next.
  CHECK_THROWS_WITH_AS(stager.stage(ctx, std::span<const float>(x).first(5), labels, 3),
                       "vgg::Network::stage: 2 samples of 3 floats need 6 floats, found 5", std::invalid_argument);
  CHECK_THROWS_AS(stager.stage(ctx, {}, {}, 3), std::invalid_argument);
  CHECK(t.take().empty());
  CHECK(stager.stage(ctx, x, labels, 3).slot == 0);
  CHECK_THROWS_WITH_AS(stager.acquire(ctx, vgg::StagedBatch{}), doctest::Contains("not made by Network::stage"),
                       std::logic_error);
  // A larger batch grows its slot.
  const std::vector<float> big(12, 0.5f);
  const std::vector<std::int32_t> big_labels(4, 1);
  (void)t.take();
  CHECK(stager.stage(ctx, big, big_labels, 3).size == 4);
  CHECK(t.take() == Log{"host free 1", "reserve 1 12 4", "upload 1"});
}

TEST_CASE_TEMPLATE("staged batches train as the same batches given directly, bit for bit", B, StagedBackend,
                   vgg::cpu::PlainBackend) {
  // StagedBackend copies each staged batch into its slot (a device backend's path); the CPU keeps a
  // view. Two batches alternate, staged one step ahead as vgg-train does.
  using Net = Arch::on<B>;
  const int batch = 4;
  const std::array<std::vector<float>, 2> xs{ref::random_vector(std::size_t(batch) * Net::input_shape.size(), 21),
                                             ref::random_vector(std::size_t(batch) * Net::input_shape.size(), 22)};
  const std::array<std::vector<std::int32_t>, 2> ys{std::vector<std::int32_t>{0, 1, 2, 1},
                                                    std::vector<std::int32_t>{2, 2, 0, 1}};
  auto direct = std::make_unique<Net>(5);
  auto staged = std::make_unique<Net>(5);
  vgg::Adam<B> adam_direct({.lr = 1e-2f}), adam_staged({.lr = 1e-2f});
  std::vector<float> scratch = xs[0];  // the caller's batch buffer, refilled for every batch
  std::vector<std::int32_t> scratch_labels = ys[0];
  vgg::StagedBatch next = staged->stage(scratch, scratch_labels);
  for (int step = 0; step < 4; ++step) {
    CAPTURE(step);
    const auto& x = xs[std::size_t(step % 2)];
    const auto& y = ys[std::size_t(step % 2)];
    const vgg::LossResult a = vgg::train_step(*direct, adam_direct, x, y);
    const vgg::StagedBatch current = next;
    const vgg::LossResult b = vgg::train_step(*staged, adam_staged, current);
    CHECK(a.loss == b.loss);
    CHECK(a.correct == b.correct);
    CHECK(std::equal(current.host_images.begin(), current.host_images.end(), x.begin()));
    scratch = xs[std::size_t((step + 1) % 2)];
    scratch_labels = ys[std::size_t((step + 1) % 2)];
    if constexpr (!B::host_memory) {
      next = staged->stage(scratch, scratch_labels);
      std::fill(scratch.begin(), scratch.end(), 1e9f);  // a copying stager is done with the caller's buffer
    } else {
      next = staged->stage(scratch, scratch_labels);  // a view: the buffer must stay as it is
    }
  }
  std::vector<std::vector<float>> pa, pb;
  direct->for_each_parameter([&](const vgg::ParameterView& p) { pa.push_back(host_copy(p.value)); });
  staged->for_each_parameter([&](const vgg::ParameterView& p) { pb.push_back(host_copy(p.value)); });
  CHECK(max_diff(pa, pb) == 0.0f);
  // Evaluation on a staged batch.
  const vgg::LossResult e1 = vgg::evaluate_batch(*direct, xs[0], ys[0]);
  const vgg::LossResult e2 = vgg::evaluate_batch(*staged, staged->stage(xs[0], ys[0]));
  CHECK(e1.loss == e2.loss);
}

TEST_CASE_TEMPLATE("a staged batch overwritten before its backward pass is refused, not read", B, StagedBackend,
                   vgg::cpu::PlainBackend) {
  auto net = std::make_unique<typename Arch::template on<B>>(2);
  const auto x = ref::random_vector(2 * Arch::input_shape.size(), 23);
  const std::vector<std::int32_t> y{0, 1};
  const vgg::StagedBatch a = net->stage(x, y);
  net->train();
  (void)net->forward(a);
  (void)net->loss(y);
  (void)net->stage(x, y);  // the other slot: a is intact
  net->backward();
  (void)net->stage(x, y);  // a's slot, refilled
  CHECK_THROWS_WITH_AS(net->backward(), doctest::Contains("overwritten by a later stage()"), std::logic_error);
  CHECK_THROWS_AS((void)net->forward(a), std::logic_error);
  CHECK_THROWS_AS((void)net->stage(x, std::vector<std::int32_t>{0, 1, 2}), std::invalid_argument);
}

namespace {

/// Fails the fail_at-th growth of a buffer in "device" memory, as a GPU that runs out does.
struct FaultyMemory {
  static inline long growths = 0, fail_at = 0;
};
template <class T>
class FaultyBuffer : public vgg::Buffer<T> {
 public:
  void reserve(std::size_t n) {
    if (n > this->capacity() && ++FaultyMemory::growths == FaultyMemory::fail_at)
      throw vgg::OutOfMemoryError("test", "device memory", n * sizeof(T), std::size_t(1000), std::size_t(4000));
    vgg::Buffer<T>::reserve(n);
  }
};
struct FaultyBackend : vgg::cpu::PlainBackend {
  static constexpr bool host_memory = false;
  template <class T>
  using Buffer = FaultyBuffer<T>;
  using BatchStager = vgg::BatchStaging<CopyTransport<FaultyBackend>>;
};
static_assert(vgg::Backend<FaultyBackend>);

}  // namespace

TEST_CASE("out of memory in any buffer the network reserves for a batch names that batch size and the buffer") {
  using Net = Arch::on<FaultyBackend>;
  const int batch = 5;
  const auto x = ref::random_vector(std::size_t(batch) * Net::input_shape.size(), 24);
  const std::vector<std::int32_t> y{0, 1, 2, 0, 1};
  auto pass = [&](Net& net) {
    net.train();
    (void)net.forward(net.stage(x, y));
    (void)net.loss(y);
    net.backward(/*input_gradient=*/true);
  };
  FaultyMemory::fail_at = 0;
  FaultyMemory::growths = 0;
  {
    auto net = std::make_unique<Net>(1);
    const long before = FaultyMemory::growths;  // the parameters: not batch-sized
    pass(*net);
    FaultyMemory::fail_at = FaultyMemory::growths - before;  // reused below as the count
  }
  const long per_batch = FaultyMemory::fail_at;
  // Staging, input, every stored output and output gradient, the input gradient (at least).
  REQUIRE(per_batch >= 4);
  for (long k = 1; k <= per_batch; ++k) {
    CAPTURE(k);
    FaultyMemory::fail_at = 0;
    FaultyMemory::growths = 0;
    auto net = std::make_unique<Net>(1);
    FaultyMemory::fail_at = FaultyMemory::growths + k;
    try {
      pass(*net);
      FAIL("no error for the growth that failed");
    } catch (const vgg::OutOfMemoryError& e) {
      CHECK(e.batch() == batch);
      CHECK_FALSE(e.purpose().empty());
      const std::string what = e.what();
      CHECK(what.find("asked for ") != std::string::npos);
      CHECK(what.find("1000 bytes free of 4000") != std::string::npos);
      CHECK(what.find("for a batch of 5") != std::string::npos);
    }
  }
  FaultyMemory::fail_at = 0;
  // After the failure the network can try again (nothing half-recorded as reserved).
  FaultyMemory::growths = 0;
  auto net = std::make_unique<Net>(1);
  FaultyMemory::fail_at = FaultyMemory::growths + per_batch;  // the last one
  CHECK_THROWS_AS(pass(*net), vgg::OutOfMemoryError);
  FaultyMemory::fail_at = 0;
  CHECK_NOTHROW(pass(*net));
  // A staging that fails while growing the slot of the last pass's input (growing frees the old
  // buffer first) leaves that pass without a backward.
  const std::vector<float> bigger(std::size_t(2 * batch) * Net::input_shape.size(), 0.5f);
  const std::vector<std::int32_t> bigger_labels(std::size_t(2 * batch), 1);
  net->train();
  const vgg::StagedBatch a = net->stage(x, y);
  (void)net->forward(a);
  (void)net->loss(y);
  (void)net->stage(x, y);  // the other slot
  FaultyMemory::growths = 0;
  FaultyMemory::fail_at = 1;
  CHECK_THROWS_WITH_AS((void)net->stage(bigger, bigger_labels), doctest::Contains("for a batch of 10"),
                       vgg::OutOfMemoryError);
  FaultyMemory::fail_at = 0;
  CHECK_THROWS_AS(net->backward(), std::logic_error);
}
