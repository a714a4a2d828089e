// A second forward pass of the same (or a smaller) batch size allocates nothing: every allocation
// function of the process is counted, including malloc used by Eigen and the OpenMP runtime.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace {
std::atomic<long> allocations{0};
}

// glibc lets a program interpose these; everything, including operator new, ends up here.
extern "C" {
void* malloc(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(a, n);
}
int posix_memalign(void** p, std::size_t a, std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12;
}
}

TEST_CASE("the counter sees allocations (the test can fail)") {
  const long before = allocations.load();
  auto p = std::make_unique<std::vector<int>>(100);
  void* q = std::aligned_alloc(64, 128);
  std::free(q);
  CHECK(allocations.load() - before >= 3);
}

TEST_CASE("a second forward of the same batch size allocates nothing, in eval and train mode") {
  using Net = vgg::vgg11<vgg::Input<1, 64, 64>, 10, 8>;
  auto net = std::make_unique<Net>(1);
  std::vector<float> x(8 * 64 * 64, 0.5f);
  for (int threads : {1, 2}) {
    net->set_threads(threads);
    for (vgg::Mode mode : {vgg::Mode::eval, vgg::Mode::train}) {
      net->set_mode(mode);
      (void)net->forward(x, 8);  // first pass: buffers are allocated here
      const long before = allocations.load();
      (void)net->forward(x, 8);
      (void)net->forward(std::span<const float>(x).first(5 * 64 * 64), 5);  // smaller batches reuse buffers
      const long allocated = allocations.load() - before;  // read before doctest's own bookkeeping
      CAPTURE(threads);
      CAPTURE(mode);
      CHECK(allocated == 0);
    }
  }
  // A larger batch than ever seen must allocate: proves the counter watches the forward pass.
  const long before = allocations.load();
  std::vector<float> bigger(16 * 64 * 64, 0.5f);
  (void)net->forward(bigger, 16);
  CHECK(allocations.load() - before > 0);
}

TEST_CASE("a steady-state training step (forward, loss, backward, Adam / SGD update) allocates nothing") {
  using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 8>;
  auto net = std::make_unique<Net>(1);
  std::vector<float> x(8 * 32 * 32, 0.25f);
  std::vector<std::int32_t> labels{0, 1, 2, 3, 4, 5, 6, 7};
  vgg::Adam adam;
  vgg::Sgd sgd({.lr = 0.01f, .momentum = 0.9f});
  // bf16 products (where the CPU has them; fp32 elsewhere) take their packing buffers from the
  // same one-time reservations.
  for (vgg::Precision precision : {vgg::Precision::fp32, vgg::Precision::bf16})
    for (int threads : {1, 2}) {
      net->context().set_precision(precision);
      net->set_threads(threads);
      (void)vgg::train_step(*net, adam, x, labels);  // first step: gradients and optimizer state
      (void)vgg::train_step(*net, sgd, x, labels);
      (void)vgg::evaluate_batch(*net, x, labels);
      const long before = allocations.load();
      (void)vgg::train_step(*net, adam, x, labels);
      (void)vgg::train_step(*net, sgd, x, labels);
      (void)vgg::evaluate_batch(*net, x, labels);
      // With a backward hook set (as data-parallel training sets one): still nothing.
      long hook_calls = 0;
      net->set_backward_hook({[](void* self, const vgg::FinishedGradients&) { ++*static_cast<long*>(self); }, &hook_calls});
      (void)vgg::train_step(*net, adam, x, labels);
      net->set_backward_hook({});
      const long allocated = allocations.load() - before;
      CAPTURE(threads);
      CAPTURE(vgg::to_string(net->context().precision_in_use()));
      CHECK(allocated == 0);
      CHECK(hook_calls == 11);  // vgg11's 8 convs and 3 linears
    }
}

TEST_CASE("batch norm: a steady-state training step and an eval batch allocate nothing") {
  // Odd sizes: 13 x 11 pools to 6 x 5, then 3 x 2; every conv runs with a pool after it but one.
  using Net = vgg::Vgg<vgg::Input<3, 13, 11>, vgg::VggBlock<2, 3, 5, vgg::BatchNorm>,
                       vgg::VggBlock<1, 5, 6, vgg::BatchNorm>, vgg::Classifier<7, 4>>;
  auto net = std::make_unique<Net>(1);
  std::vector<float> x(6 * 3 * 13 * 11, 0.25f);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i % 17) / 17.0f;
  const std::vector<std::int32_t> labels{0, 1, 2, 3, 0, 1};
  vgg::Sgd sgd({.lr = 0.01f, .momentum = 0.9f});
  for (int threads : {1, 2}) {
    net->set_threads(threads);
    (void)vgg::train_step(*net, sgd, x, labels);
    (void)vgg::evaluate_batch(*net, x, labels);
    net->backward();  // eval-mode backward: the folded convs' gradients unfolded
    const long before = allocations.load();
    (void)vgg::train_step(*net, sgd, x, labels);
    (void)vgg::evaluate_batch(*net, x, labels);
    net->backward();
    const long allocated = allocations.load() - before;
    CAPTURE(threads);
    CHECK(allocated == 0);
  }
}

TEST_CASE("wide conv layers (Winograd on the AVX-512 path): steady-state training, eval and eval-mode backward allocate nothing") {
  // The three convs are picked by cpu::Backend's Winograd rule on the AVX-512 path: the second runs its
  // forward and input gradient by Winograd in training too; the third is pooled: in training its
  // forward writes the pool's winner masks and its backward rebuilds the whole dz (a buffer reserved
  // with the backward) for a Winograd input gradient; the eval-mode backward rebuilds its pool state
  // by the direct path.
  // 32 x 32 images: a batch of 3 holds 768 tiles, enough for new filter transforms every step.
  using Net = vgg::Vgg<vgg::Input<256, 32, 32>, vgg::VggBlock<3, 256, 256>, vgg::Classifier<7, 4>>;
  auto net = std::make_unique<Net>(1);
  std::vector<float> x(3 * 256 * 32 * 32);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i % 19) / 19.0f - 0.4f;
  const std::vector<std::int32_t> labels{0, 1, 2};
  vgg::Sgd sgd({.lr = 0.01f, .momentum = 0.9f});
  // In bf16 mode (where the CPU has AVX512-BF16) the same layers run Winograd with bf16 GEMMs: the
  // filters' bf16 copies and the GEMMs' bf16 packing buffers come from the same reservations.
  for (vgg::Precision precision : {vgg::Precision::fp32, vgg::Precision::bf16})
    for (int threads : {1, 2}) {
      net->context().set_precision(precision);
      net->set_threads(threads);
      (void)vgg::train_step(*net, sgd, x, labels);
      (void)vgg::evaluate_batch(*net, x, labels);
      net->backward();
      const long before = allocations.load();
      (void)vgg::train_step(*net, sgd, x, labels);
      (void)vgg::evaluate_batch(*net, x, labels);
      net->backward();
      const long allocated = allocations.load() - before;
      CAPTURE(threads);
      CAPTURE(vgg::to_string(net->context().precision_in_use()));
      CHECK(allocated == 0);
    }
}
