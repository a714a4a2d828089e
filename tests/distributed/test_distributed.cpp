// Data-parallel training, run by CTest under `mpirun -np 2`: N ranks with shards of a global batch
// end every step with the weights one process gets from the whole batch (dropout off), dropout
// draws different masks per rank and the weights still agree bit for bit, ranks that disagree are
// refused, and a checkpoint moves between rank counts. Every test case is collective: all ranks
// run the same cases in the same order.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <unistd.h>

#include <vgg/distributed.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace fs = std::filesystem;
namespace dist = vgg::distributed;

// C++ allocations are counted: ours. (Open MPI's C code mallocs a temporary buffer in each
// allreduce and frees it; that is its business, and not counted here.)
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}
namespace {
std::atomic<long> allocations{0};
}
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = __libc_malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = __libc_memalign(std::size_t(a), n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete(void* p, std::size_t) noexcept { __libc_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { __libc_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { __libc_free(p); }

namespace {

template <double P>
using TinyNet = vgg::Vgg<vgg::Input<1, 16, 16>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>, vgg::Classifier<32, 10, P>>;
using Plain = TinyNet<0.0>;
using WithDropout = TinyNet<0.5>;

/// A deterministic global batch number `step` of `global` samples, the same on every rank.
struct GlobalBatch {
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  GlobalBatch(std::size_t global, std::uint64_t step) : x(global * Plain::input_shape.size()), labels(global) {
    vgg::Rng rng(1000 + step);
    for (float& v : x) v = vgg::unit_float(rng.next()) * 2.0f - 1.0f;
    for (auto& l : labels) l = std::int32_t(rng.below(10));
  }
  std::span<const float> images(dist::Shard s) const {
    const std::size_t per = Plain::input_shape.size();
    return std::span<const float>(x).subspan(s.begin * per, s.size() * per);
  }
  std::span<const std::int32_t> labels_of(dist::Shard s) const {
    return std::span<const std::int32_t>(labels).subspan(s.begin, s.size());
  }
  dist::Shard all() const { return {0, labels.size()}; }
};

std::vector<float> all_params(auto& net) {
  std::vector<float> v;
  net.for_each_parameter_data([&](std::span<float> p, std::span<float>) { v.insert(v.end(), p.begin(), p.end()); });
  return v;
}

/// Largest |a - b| / (1 + |b|) over all elements.
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])) / (1.0 + std::abs(double(b[i]))));
  return worst;
}

int world_rank() { return dist::Environment::world_rank(); }
int world_size() { return dist::Environment::world_size(); }

/// Small buckets, so that parameters span several buckets and buckets span several parameters.
constexpr dist::Options kSmallBuckets{.bucket_bytes = 4096 * sizeof(float), .timeout_seconds = 60.0};

/// Both reductions: after backward, and during it (MPI_Iallreduce from the backward hook) with
/// buckets of 250 floats (the tiny net's parameters fill dozens), so that many are in flight at
/// once and their boundaries fall inside tensors.
constexpr dist::Overlap kModes[] = {dist::Overlap::off, dist::Overlap::on};
constexpr dist::Options small_buckets(dist::Overlap overlap) {
  return {.bucket_bytes = overlap == dist::Overlap::on ? 250 * sizeof(float) : 4096 * sizeof(float),
          .timeout_seconds = 60.0,
          .overlap = overlap};
}

/// The in-place overlap flavour (NcclCommunicator's) on host memory, for this machine without a
/// GPU: MpiCommunicator with its staged buckets hidden and start_bucket_in_place added, which scales
/// each piece in place (zeros for pre_scale 0) and starts one MPI_Iallreduce per piece on the
/// gradient memory itself. DataParallel then runs the same host logic as with NCCL.
class InPlaceMpi : public dist::MpiCommunicator {
 public:
  using MpiCommunicator::MpiCommunicator;
  std::span<float> bucket(std::size_t) = delete;                    // no staging: DataParallel
  void start_bucket(std::size_t, const char*, std::uint64_t) = delete;  // must take the in-place path

  void reserve_buckets(std::span<const std::size_t> sizes) {
    sizes_.assign(sizes.begin(), sizes.end());
    requests_.clear();
    requests_.reserve(64 * sizes.size());  // pieces per bucket are few (tensors per bucket + 1)
  }
  void start_bucket_in_place(std::size_t k, std::span<const std::span<float>> pieces, float pre_scale,
                             const char* what, std::uint64_t step) {
    std::size_t n = 0;
    for (std::span<float> p : pieces) n += p.size();
    REQUIRE(k == started_);  // in order, each once
    REQUIRE(n == sizes_[k]);
    ++started_;
    if (fail_progress_at_step == step && rank() == 1) {
      fail_now_ = true;  // once
      fail_progress_at_step = ~std::uint64_t{0};
    }
    for (std::span<float> p : pieces) {
      if (pre_scale == 0.0f) {
        std::fill(p.begin(), p.end(), 0.0f);
      } else if (pre_scale != 1.0f) {
        for (float& g : p) g *= pre_scale;
      }
      REQUIRE(requests_.size() < requests_.capacity());  // no allocation in a step
      requests_.push_back(MPI_REQUEST_NULL);
      if (MPI_Iallreduce(MPI_IN_PLACE, p.data(), int(p.size()), MPI_FLOAT, MPI_SUM, comm(), &requests_.back()) !=
          MPI_SUCCESS)
        throw dist::Error(std::string("MPI_Iallreduce failed: ") + what);
    }
    ++in_place_starts;
  }
  void progress(const char* what, std::uint64_t step) {
    int done = 0;
    if (MPI_Testall(int(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
      throw dist::Error(std::string("MPI_Testall failed: ") + what);
    // Injected failure: the backward pass throws (not a communication Error) on rank 1, after
    // the buckets of the hook that called this were started.
    if (fail_now_) {
      fail_now_ = false;
      throw std::runtime_error("injected backward failure in step " + std::to_string(step));
    }
  }
  void wait_buckets(const char* what, std::uint64_t) {
    REQUIRE(started_ == sizes_.size());  // every bucket started before the wait
    if (MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE) != MPI_SUCCESS)
      throw dist::Error(std::string("MPI_Waitall failed: ") + what);
    requests_.clear();
    started_ = 0;
  }

  long in_place_starts = 0;
  std::uint64_t fail_progress_at_step = ~std::uint64_t{0};

 private:
  std::vector<std::size_t> sizes_;
  std::vector<MPI_Request> requests_;
  std::size_t started_ = 0;
  bool fail_now_ = false;
};

}  // namespace

TEST_CASE("shard_range: contiguous, balanced shards that cover the global batch") {
  for (std::size_t global : {0u, 1u, 5u, 8u, 64u})
    for (int ranks : {1, 2, 3, 7}) {
      std::size_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const dist::Shard s = dist::shard_range(global, r, ranks);
        CHECK(s.begin == next);
        CHECK(s.size() + 1 >= global / std::size_t(ranks));
        CHECK(s.size() <= global / std::size_t(ranks) + 1);
        next = s.end;
      }
      CHECK(next == global);
    }
  CHECK_THROWS_AS(dist::shard_range(8, 2, 2), std::invalid_argument);
  CHECK(dist::dropout_seed(5, 0) == 5);
  CHECK(dist::dropout_seed(5, 1) != dist::dropout_seed(5, 2));
}

TEST_CASE("N ranks with per-rank batch B give one process's weights with batch N*B (dropout off, Adam)") {
  const int ranks = world_size();
  if (ranks < 2) MESSAGE("running on one rank: the reduction is trivial (run under mpirun -np 2)");
  constexpr std::size_t per_rank = 4;
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  auto net = std::make_unique<Plain>(7);
  auto reference = std::make_unique<Plain>(7);
  const auto initial = all_params(*reference);
  vgg::Adam adam({.lr = 1e-2f}), reference_adam({.lr = 1e-2f});
  dist::DataParallel dp(*net, {.settings = {{"test", "equivalence"}}}, small_buckets(mode));
  CHECK(dp.bucket_floats() < std::size_t(Plain::num_params));  // several buckets are exercised
  CHECK(dp.overlapping() == (mode == dist::Overlap::on));
  if (mode == dist::Overlap::on) CHECK(dp.overlap_buckets() > 20);
  for (std::uint64_t step = 0; step < 5; ++step) {
    const GlobalBatch batch(per_rank * std::size_t(ranks), step);
    const dist::Shard mine = dp.shard(batch.labels.size());
    CHECK(mine.size() == per_rank);
    const dist::StepResult r = dp.step(adam, batch.images(mine), batch.labels_of(mine));
    const vgg::LossResult expected =
        vgg::train_step(*reference, reference_adam, batch.images(batch.all()), batch.labels_of(batch.all()));
    CHECK(r.samples == (long long)(batch.labels.size()));
    CHECK(r.correct == expected.correct);
    CHECK(r.loss == doctest::Approx(expected.loss).epsilon(1e-5));
    // Every bucket was started from the backward hook (the first conv's completes the last one).
    if (mode == dist::Overlap::on) CHECK(dp.buckets_started_in_backward() == dp.overlap_buckets());
  }
  const auto trained = all_params(*net), expected = all_params(*reference);
  CHECK(max_relative_difference(expected, initial) > 1e-3);  // the steps moved the weights
  CHECK(max_relative_difference(trained, expected) < 1e-5);
  CHECK(dp.in_sync());
  CHECK(adam.steps() == 5);
  }
}

TEST_CASE("overlapped and after-backward reductions give the same bits on 2 ranks, with and without dropout") {
  // With 2 ranks each element's sum is one addition, whatever the bucket boundaries or MPI's
  // algorithm: the two modes must agree exactly (more ranks may add in another order).
  if (world_size() > 2) return;
  auto run = [](auto net, dist::Overlap mode) {
    vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f});
    dist::DataParallel dp(*net, {}, small_buckets(mode));
    for (std::uint64_t step = 0; step < 4; ++step) {
      const GlobalBatch batch(3 * std::size_t(world_size()) + 1, 300 + step);  // uneven shards
      const dist::Shard mine = dp.shard(batch.labels.size());
      dp.step(sgd, batch.images(mine), batch.labels_of(mine));
      CHECK(dp.in_sync());
    }
    return all_params(*net);
  };
  CHECK(run(std::make_unique<Plain>(21), dist::Overlap::off) == run(std::make_unique<Plain>(21), dist::Overlap::on));
  CHECK(run(std::make_unique<WithDropout>(22), dist::Overlap::off) ==
        run(std::make_unique<WithDropout>(22), dist::Overlap::on));
}

TEST_CASE("overlapped buckets end where the next tensor does not fit, and split only tensors larger than a bucket") {
  auto net = std::make_unique<Plain>(1);
  dist::DataParallel dp(*net, {}, {.bucket_bytes = 4096 * sizeof(float), .timeout_seconds = 60.0,
                                   .overlap = dist::Overlap::on});
  // Backward order: the last two linears and the first one's bias (1,418 floats), the first
  // linear's weight (4,096: a bucket of its own), the convolutions (336). Filling buckets to the
  // brim would give 2, the second waiting for the convolutions.
  CHECK(dp.overlap_buckets() == 3);
  vgg::Adam adam({.lr = 1e-2f});
  const GlobalBatch batch(2 * std::size_t(world_size()), 5);
  // A hook of the caller's is set aside for the step's backward and put back.
  long calls = 0;
  net->set_backward_hook({[](void* c, const vgg::FinishedGradients&) { ++*static_cast<long*>(c); }, &calls});
  dp.step(adam, batch.images(dp.shard(batch.labels.size())), batch.labels_of(dp.shard(batch.labels.size())));
  CHECK(dp.buckets_started_in_backward() == 3);
  CHECK(dp.in_sync());
  CHECK(calls == 0);
  CHECK(net->backward_hook().self == &calls);
}

TEST_CASE("Overlap::automatic is off on one host, and ranks asking for different modes are refused") {
  auto net = std::make_unique<Plain>(1);
  dist::DataParallel automatic(*net, {}, {.overlap = dist::Overlap::automatic});
  CHECK_FALSE(automatic.overlapping());  // mpirun here starts every rank on this machine
  CHECK(automatic.overlap_buckets() == 0);
  if (world_size() < 2) return;
  const dist::Options mine{.overlap = world_rank() == 0 ? dist::Overlap::off : dist::Overlap::on};
  CHECK_THROWS_WITH_AS(dist::DataParallel(*net, {}, mine),
                       doctest::Contains("rank 1 disagrees with rank 0 on the gradient overlap: rank 0 has 'off', "
                                         "rank 1 has 'on'"),
                       dist::Error);
}

TEST_CASE("a steady data-parallel step makes no C++ allocation") {
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  auto net = std::make_unique<WithDropout>(2);
  vgg::Adam adam({.lr = 1e-3f});
  dist::DataParallel dp(*net, {}, small_buckets(mode));
  const GlobalBatch batch(4 * std::size_t(world_size()), 1);
  const dist::Shard mine = dp.shard(batch.labels.size());
  for (int i = 0; i < 2; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));  // buffers, moments
  const long before = allocations.load();
  for (int i = 0; i < 3; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  const long during = allocations.load() - before;
  CHECK(during == 0);  // the step, the communicator and the watchdog
  const long control = allocations.load();
  auto probe = std::make_unique<std::vector<int>>(10);  // the counter sees allocations
  CHECK(allocations.load() - control >= 2);
  }
}

TEST_CASE("uneven shards and an empty shard weight each rank by its sample count (SGD with momentum)") {
  const int ranks = world_size();
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  auto net = std::make_unique<Plain>(3);
  auto reference = std::make_unique<Plain>(3);
  vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f}), reference_sgd({.lr = 0.05f, .momentum = 0.9f});
  dist::DataParallel dp(*net, {}, small_buckets(mode));
  // 2 ranks + 1 sample: shards of 2 and 1; then 1 sample: rank 1's shard is empty.
  const std::size_t sizes[] = {std::size_t(2 * ranks + 1), 3, 1, std::size_t(ranks + 1)};
  std::uint64_t step = 0;
  for (const std::size_t global : sizes) {
    const GlobalBatch batch(global, 50 + step++);
    const dist::Shard mine = dp.shard(global);
    const dist::StepResult r = dp.step(sgd, batch.images(mine), batch.labels_of(mine));
    const vgg::LossResult expected =
        vgg::train_step(*reference, reference_sgd, batch.images(batch.all()), batch.labels_of(batch.all()));
    CHECK(r.loss == doctest::Approx(expected.loss).epsilon(1e-5));
  }
  CHECK(max_relative_difference(all_params(*net), all_params(*reference)) < 1e-5);
  CHECK(net->step() == reference->step());  // the dropout counters advanced on the empty shard too
  CHECK(dp.in_sync());
  }
}

TEST_CASE("with dropout, ranks draw different masks and still hold bit-identical weights after every step") {
  const int ranks = world_size();
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  // Different initial weights per rank: the first step must take the root's.
  auto net = std::make_unique<WithDropout>(11 + std::uint64_t(world_rank()));
  vgg::Adam adam({.lr = 1e-2f});
  dist::DataParallel dp(*net, {}, small_buckets(mode));
  const GlobalBatch same_input(4, 99);
  for (std::uint64_t step = 0; step < 4; ++step) {
    const GlobalBatch batch(4 * std::size_t(ranks), step);
    const dist::Shard mine = dp.shard(batch.labels.size());
    dp.step(adam, batch.images(mine), batch.labels_of(mine));
    CHECK(dp.in_sync());
  }
  CHECK(net->seed() == dist::dropout_seed(11, dp.rank()));
  if (ranks > 1) {
    // The same input at the same step counter: the logits differ only through the ranks' masks.
    net->set_mode(vgg::Mode::train);
    const auto logits = net->forward(same_input.images(same_input.all()), 4);
    const std::uint64_t mine = dist::fingerprint_of(std::span<const float>(logits.data(), std::size_t(logits.size())));
    const auto [lo, hi] = dp.communicator().min_max(mine, "test", 0);
    CHECK(lo != hi);
    // The check can fail: one rank's weight one ulp off is seen, and synchronize() repairs it.
    if (dp.rank() == 1) {
      net->for_each_parameter_data([](std::span<float> p, std::span<float>) {
        p[0] = std::nextafter(p[0], 1e9f);
      });
    }
    CHECK_FALSE(dp.in_sync());
    dp.synchronize(adam);
    CHECK(dp.in_sync());
  }
  }
}

TEST_CASE("ranks that disagree on settings or architecture are refused at start-up with a message") {
  if (world_size() < 2) return;
  auto net = std::make_unique<Plain>(1);
  const dist::Identity differs{.settings = {{"lr", std::to_string(world_rank())}}};
  CHECK_THROWS_WITH_AS(dist::DataParallel(*net, differs),
                       doctest::Contains("rank 1 disagrees with rank 0 on the setting 'lr': rank 0 has '0', rank 1 has '1'"),
                       dist::Error);
  auto other = std::make_unique<WithDropout>(1);
  if (world_rank() == 0) {
    CHECK_THROWS_WITH_AS(dist::DataParallel(*net, {}), doctest::Contains("on the architecture"), dist::Error);
  } else {
    CHECK_THROWS_WITH_AS(dist::DataParallel(*other, {}), doctest::Contains("on the architecture"), dist::Error);
  }
}

TEST_CASE("a bad shard on one rank stops every rank in the same step, each with a message") {
  if (world_size() < 2) return;
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  auto net = std::make_unique<Plain>(1);
  vgg::Adam adam({.lr = 1e-2f});
  dist::DataParallel dp(*net, {}, small_buckets(mode));
  GlobalBatch batch(4 * std::size_t(world_size()), 7);
  const dist::Shard mine = dp.shard(batch.labels.size());
  dp.step(adam, batch.images(mine), batch.labels_of(mine));
  batch.labels[dp.shard(batch.labels.size()).begin] = dp.rank() == 1 ? 12 : 0;  // class 12 of 10 on rank 1
  if (dp.rank() == 1) {
    CHECK_THROWS_AS(dp.step(adam, batch.images(mine), batch.labels_of(mine)), std::invalid_argument);
  } else {
    CHECK_THROWS_WITH_AS(dp.step(adam, batch.images(mine), batch.labels_of(mine)),
                         doctest::Contains("other rank(s) failed in step 1"), dist::Error);
  }
  CHECK(adam.steps() == 1);  // nobody updated

  // A rank whose first step has no samples has no gradient to contribute: every rank is told.
  auto fresh = std::make_unique<Plain>(1);
  vgg::Adam fresh_adam({.lr = 1e-2f});
  dist::DataParallel first(*fresh, {}, small_buckets(mode));
  const GlobalBatch one(1, 8);
  const dist::Shard shard = first.shard(1);
  if (shard.size() == 0) {
    CHECK_THROWS_WITH_AS(first.step(fresh_adam, one.images(shard), one.labels_of(shard)),
                         doctest::Contains("got no samples before its first backward pass"), std::logic_error);
  } else {
    CHECK_THROWS_AS(first.step(fresh_adam, one.images(shard), one.labels_of(shard)), dist::Error);
  }
  }
}

TEST_CASE("a NaN in the last rank's shard makes the global loss NaN, and no rank updates (as train_step)") {
  for (const dist::Overlap mode : kModes) {
  CAPTURE(dist::to_string(mode));
  auto net = std::make_unique<Plain>(2);
  vgg::Adam adam({.lr = 1e-2f});
  dist::DataParallel dp(*net, {}, small_buckets(mode));
  GlobalBatch batch(2 * std::size_t(world_size()), 9);
  const dist::Shard mine = dp.shard(batch.labels.size());
  dp.step(adam, batch.images(mine), batch.labels_of(mine));
  const std::vector<float> before = all_params(*net);
  const dist::Shard last = dist::shard_range(batch.labels.size(), world_size() - 1, world_size());
  batch.x[last.begin * Plain::input_shape.size()] = std::numeric_limits<float>::quiet_NaN();
  const dist::StepResult r = dp.step(adam, batch.images(mine), batch.labels_of(mine));
  CHECK(std::isnan(r.loss));       // every rank sees the global loss
  CHECK(adam.steps() == 1);        // nobody updated
  CHECK(all_params(*net) == before);
  CHECK(dp.in_sync());
  }
}

TEST_CASE("in-place overlap (NCCL's flavour, on host memory): the staged overlap's bits and one process's weights") {
  // Shards of 2 and 1, then 1 sample (rank 1's shard is empty), dropout off and on. With 2 ranks
  // each element's sum is one addition: in place per piece, staged per bucket and after backward
  // must agree bit for bit.
  const std::size_t globals[] = {std::size_t(2 * world_size() + 1), 1, 3, std::size_t(world_size() + 1)};
  auto run = [&](auto net, auto kind, dist::Overlap mode, auto* reference) {
    using Net = typename decltype(net)::element_type;
    using Comm = typename decltype(kind)::type;
    vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f}), reference_sgd({.lr = 0.05f, .momentum = 0.9f});
    dist::DataParallel<Net, Comm> dp(*net, {}, small_buckets(mode));
    CHECK(dp.overlapping() == (mode == dist::Overlap::on));
    std::uint64_t step = 0;
    for (const std::size_t global : globals) {
      const GlobalBatch batch(global, 700 + step++);
      const dist::Shard mine = dp.shard(global);
      const dist::StepResult r = dp.step(sgd, batch.images(mine), batch.labels_of(mine));
      if (mode == dist::Overlap::on && mine.size() > 0) CHECK(dp.buckets_started_in_backward() == dp.overlap_buckets());
      if (reference != nullptr) {
        const vgg::LossResult expected =
            vgg::train_step(*reference, reference_sgd, batch.images(batch.all()), batch.labels_of(batch.all()));
        CHECK(r.loss == doctest::Approx(expected.loss).epsilon(1e-5));
      }
      CHECK(dp.in_sync());
    }
    static_assert(dist::DataParallel<Net, Comm>::overlaps_in_place() == std::is_same_v<Comm, InPlaceMpi>,
                  "InPlaceMpi takes the in-place flavour, MpiCommunicator the staged one");
    if constexpr (std::is_same_v<Comm, InPlaceMpi>) {
      // With overlap every bucket of every step went through the in-place start (none through staging).
      CHECK(dp.communicator().in_place_starts == long(dp.overlap_buckets() * std::size(globals)));
      if (mode == dist::Overlap::on) CHECK(dp.overlap_buckets() > 20);
    }
    if (reference != nullptr) CHECK(max_relative_difference(all_params(*net), all_params(*reference)) < 1e-5);
    return all_params(*net);
  };
  struct Staged { using type = dist::MpiCommunicator; };
  struct InPlace { using type = InPlaceMpi; };
  auto reference = std::make_unique<Plain>(31);
  const auto in_place = run(std::make_unique<Plain>(31), InPlace{}, dist::Overlap::on, reference.get());
  CHECK(max_relative_difference(in_place, all_params(*std::make_unique<Plain>(31))) > 1e-3);  // it trained
  if (world_size() <= 2) {
    CHECK(in_place == run(std::make_unique<Plain>(31), Staged{}, dist::Overlap::on, (Plain*)nullptr));
    CHECK(in_place == run(std::make_unique<Plain>(31), InPlace{}, dist::Overlap::off, (Plain*)nullptr));
    const auto dropout = run(std::make_unique<WithDropout>(32), InPlace{}, dist::Overlap::on, (WithDropout*)nullptr);
    CHECK(dropout == run(std::make_unique<WithDropout>(32), Staged{}, dist::Overlap::on, (WithDropout*)nullptr));
    CHECK(dropout == run(std::make_unique<WithDropout>(32), Staged{}, dist::Overlap::off, (WithDropout*)nullptr));
  }
}

TEST_CASE("in-place overlap: a steady step makes no C++ allocation; a rank whose backward throws stops every rank") {
  auto net = std::make_unique<WithDropout>(2);
  vgg::Adam adam({.lr = 1e-3f});
  dist::DataParallel<WithDropout, InPlaceMpi> dp(*net, {}, small_buckets(dist::Overlap::on));
  const GlobalBatch batch(4 * std::size_t(world_size()), 1);
  const dist::Shard mine = dp.shard(batch.labels.size());
  for (int i = 0; i < 2; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  const long before = allocations.load();
  for (int i = 0; i < 3; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  CHECK(allocations.load() - before == 0);
  if (world_size() < 2) return;
  // Rank 1's backward throws from the hook of its first bucket in the 6th step: it starts the rest with
  // zeros, every rank waits, and the flag's host allreduce stops all of them before the update.
  const std::uint64_t failing = net->step();
  dp.communicator().fail_progress_at_step = failing;
  const std::string step_text = "step " + std::to_string(failing);
  if (dp.rank() == 1) {
    CHECK_THROWS_WITH_AS(dp.step(adam, batch.images(mine), batch.labels_of(mine)),
                         doctest::Contains(("injected backward failure in " + step_text).c_str()), std::runtime_error);
  } else {
    CHECK_THROWS_WITH_AS(dp.step(adam, batch.images(mine), batch.labels_of(mine)),
                         doctest::Contains(("1 other rank(s) failed in the backward pass of " + step_text).c_str()), dist::Error);
  }
  CHECK(adam.steps() == 5);  // nobody updated
  CHECK(dp.in_sync());
  dp.communicator().fail_progress_at_step = ~std::uint64_t{0};
  dp.step(adam, batch.images(mine), batch.labels_of(mine));
  CHECK(adam.steps() == 6);
  CHECK(dp.in_sync());
}

TEST_CASE("a checkpoint written by the root resumes on another number of ranks") {
  const int ranks = world_size();
  long long root_pid = ::getpid();  // one directory for the job, named by the root
  MPI_Bcast(&root_pid, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  const fs::path dir = fs::temp_directory_path() / ("vgg_dist_" + std::to_string(root_pid));
  const fs::path file = dir / "run.safetensors";
  constexpr std::size_t global = 8;
  auto reference = std::make_unique<Plain>(5);
  vgg::Adam reference_adam({.lr = 1e-2f});
  for (std::uint64_t step = 0; step < 6; ++step) {
    const GlobalBatch batch(global, 200 + step);
    vgg::train_step(*reference, reference_adam, batch.images(batch.all()), batch.labels_of(batch.all()));
  }
  {  // 3 steps on all ranks; the root saves.
    auto net = std::make_unique<Plain>(5);
    vgg::Adam adam({.lr = 1e-2f});
    dist::DataParallel dp(*net, {}, kSmallBuckets);
    for (std::uint64_t step = 0; step < 3; ++step) {
      const GlobalBatch batch(global, 200 + step);
      dp.step(adam, batch.images(dp.shard(global)), batch.labels_of(dp.shard(global)));
    }
    if (dp.is_root()) {
      fs::create_directories(dir);
      vgg::io::save_training_checkpoint(file, *net, adam, {.epoch = 0, .network_step = std::int64_t(net->step()), .metadata = {}});
    }
    CHECK(dp.in_sync());  // collective: the file exists once every rank is past it
  }
  {  // 3 more steps on one rank (each rank on its own: MPI_COMM_SELF), from the file.
    auto net = std::make_unique<Plain>(99);
    vgg::Adam adam({.lr = 1e-2f});
    vgg::io::load_training_checkpoint(file, *net, adam);
    CHECK(adam.steps() == 3);
    dist::DataParallel dp(*net, {}, kSmallBuckets, MPI_COMM_SELF);
    for (std::uint64_t step = 3; step < 6; ++step) {
      const GlobalBatch batch(global, 200 + step);
      dp.step(adam, batch.images(dp.shard(global)), batch.labels_of(dp.shard(global)));
    }
    CHECK(max_relative_difference(all_params(*net), all_params(*reference)) < 1e-5);
  }
  {  // and back onto all ranks, where only the root has read the file
    auto net = std::make_unique<Plain>(99);
    vgg::Adam adam({.lr = 1e-2f});
    dist::DataParallel dp(*net, {}, kSmallBuckets);
    if (dp.is_root()) vgg::io::load_training_checkpoint(file, *net, adam);
    for (std::uint64_t step = 3; step < 6; ++step) {
      const GlobalBatch batch(global, 200 + step);
      dp.step(adam, batch.images(dp.shard(global)), batch.labels_of(dp.shard(global)));
    }
    CHECK(adam.steps() == 6);
    CHECK(max_relative_difference(all_params(*net), all_params(*reference)) < 1e-5);
    CHECK(dp.in_sync());
    if (dp.is_root()) fs::remove_all(dir);
  }
  (void)ranks;
}

int main(int argc, char** argv) {
  dist::Environment mpi(argc, argv);
  doctest::Context context(argc, argv);
  const int failed = context.run();
  // Every rank's verdict decides: a failure on any rank fails the job.
  int any = failed != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}
