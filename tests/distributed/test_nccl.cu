// Data-parallel training over NCCL (<vgg/distributed/nccl.hpp>), run by CTest under mpirun.
//   --test-suite=host    the host-side logic, on every machine: NCCL status names and messages,
//                        the wait loop behind the collective timeout, argument checks, the seam that
//                        hands a device communicator the network's context, use_local_gpu's refusal.
//   --test-suite=device  a vgg::cuda network trained by DataParallel<Net, NcclCommunicator> ends
//                        with the weights of the CPU network trained by the MPI path; ranks stay bit-
//                        identical; overlap on and off give the same bits; no device allocation
//                        in a steady step; a stalled collective (blocking or overlapped) times
//                        out, aborts the communicator and names itself. Without one GPU per rank every rank prints VGG_SKIPPED and the job
//                        exits with kSkipped, which CTest reports as skipped.
// Every test case is collective: all ranks run the same cases in the same order.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <vgg/cuda.hpp>
#include <vgg/distributed.hpp>
#include <vgg/distributed/nccl.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../cuda/compare.hpp"

namespace dist = vgg::distributed;

namespace {

constexpr int kSkipped = 77;  // the tests' SKIP_RETURN_CODE
bool device_skipped = false;

template <double P>
using TinyNet = vgg::Vgg<vgg::Input<1, 16, 16>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>, vgg::Classifier<32, 10, P>>;
using Gpu = vgg::cuda::Backend;

int world_rank() { return dist::Environment::world_rank(); }
int world_size() { return dist::Environment::world_size(); }

/// Small buckets: parameters span several buckets and buckets span several parameters.
constexpr dist::Options kSmallBuckets{.bucket_bytes = 1000 * sizeof(float), .timeout_seconds = 60.0};

/// Collective: true (after printing VGG_SKIPPED) when some rank has no GPU of its own.
bool no_gpu_per_rank() {
  std::string problem;
  try {
    dist::use_local_gpu();  // collective: every rank calls it, with or without a device
  } catch (const std::exception& e) {
    problem = e.what();
  }
  int any = problem.empty() ? 0 : 1;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any == 0) return false;
  std::printf("VGG_SKIPPED: rank %d of %d: %s\n", world_rank(), world_size(),
              problem.empty() ? "another rank has no GPU of its own" : problem.c_str());
  device_skipped = true;
  return true;
}

/// A deterministic global batch number `step` of `global` samples, the same on every rank.
struct GlobalBatch {
  static constexpr std::size_t per_sample = TinyNet<0.0>::input_shape.size();
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  GlobalBatch(std::size_t global, std::uint64_t step) : x(global * per_sample), labels(global) {
    vgg::Rng rng(1000 + step);
    for (float& v : x) v = vgg::unit_float(rng.next()) * 2.0f - 1.0f;
    for (auto& l : labels) l = std::int32_t(rng.below(10));
  }
  std::span<const float> images(dist::Shard s) const {
    return std::span<const float>(x).subspan(s.begin * per_sample, s.size() * per_sample);
  }
  std::span<const std::int32_t> labels_of(dist::Shard s) const {
    return std::span<const std::int32_t>(labels).subspan(s.begin, s.size());
  }
};

/// Every parameter of `net`, on the host, in network order.
template <class Net>
std::vector<float> host_params(Net& net) {
  std::vector<float> v(static_cast<std::size_t>(Net::num_params));
  net.copy_parameters_to_host(v);
  return v;
}

/// MpiCommunicator behind the constructor a device communicator has: records the context it was
/// given and every bucket DataParallel hands it.
class RecordingComm {
 public:
  static constexpr bool host_memory = true;
  RecordingComm(vgg::cpu::Backend::Context& ctx, MPI_Comm parent, double timeout) : mpi_(parent, timeout), ctx_(&ctx) {}
  int rank() const { return mpi_.rank(); }
  int size() const { return mpi_.size(); }
  void reserve(std::size_t floats) { mpi_.reserve(floats); }
  void allreduce_sum(std::span<const std::span<float>> pieces, float pre_scale, const char* what, std::uint64_t step) {
    std::size_t n = 0;
    for (std::span<float> p : pieces) {
      n += p.size();
      pieces_.push_back(p.data());
      piece_sizes_.push_back(p.size());
    }
    bucket_sizes_.push_back(n);
    mpi_.allreduce_sum(pieces, pre_scale, what, step);
  }
  void allreduce_sum(std::span<double> v, const char* what, std::uint64_t step) { mpi_.allreduce_sum(v, what, step); }
  auto min_max(std::uint64_t v, const char* what, std::uint64_t step) { return mpi_.min_max(v, what, step); }
  void broadcast(std::span<float> d, int root, const char* what, std::uint64_t step) { mpi_.broadcast(d, root, what, step); }
  void broadcast(std::span<std::int64_t> d, int root, const char* what, std::uint64_t step) {
    mpi_.broadcast(d, root, what, step);
  }
  std::vector<std::string> allgather(const std::string& text, const char* what) { return mpi_.allgather(text, what); }

  dist::MpiCommunicator mpi_;
  vgg::cpu::Backend::Context* ctx_;
  std::vector<std::size_t> bucket_sizes_, piece_sizes_;
  std::vector<const float*> pieces_;
};

}  // namespace

TEST_SUITE("host") {

TEST_CASE("an NCCL status is named, with NCCL's text, the call, the step and NCCL's last error") {
  for (ncclResult_t r : {ncclSuccess, ncclUnhandledCudaError, ncclSystemError, ncclInternalError, ncclInvalidArgument,
                         ncclInvalidUsage, ncclRemoteError, ncclInProgress})
    CHECK(dist::detail::nccl_result_name(r).rfind("nccl", 0) == 0);
  CHECK(dist::detail::nccl_result_name(ncclRemoteError) == "ncclRemoteError");
  CHECK(dist::detail::nccl_result_name(ncclResult_t(42)) == "ncclResult_t 42");
  const std::string message = dist::detail::nccl_failure_message(3, "ncclAllReduce", "gradient allreduce", 41,
                                                                 ncclRemoteError, "peer 1 closed the connection");
  CHECK(message.find("rank 3: ncclAllReduce (gradient allreduce) failed in step 41: ncclRemoteError (") != std::string::npos);
  CHECK(message.find(ncclGetErrorString(ncclRemoteError)) != std::string::npos);
  CHECK(message.find("NCCL: peer 1 closed the connection") != std::string::npos);
  CHECK(message.find("resume from the last checkpoint") != std::string::npos);
  CHECK(dist::detail::nccl_failure_message(0, "ncclGetUniqueId", "start-up", 0, ncclSystemError, "").find("NCCL:") ==
        std::string::npos);
}

TEST_CASE("the wait behind every NCCL collective ends when done, on a failure, or at the timeout") {
  using dist::detail::PollState;
  using dist::detail::WaitOutcome;
  using Clock = std::chrono::steady_clock;
  int polls = 0;
  CHECK(dist::detail::wait_for([&] { return ++polls < 5 ? PollState::pending : PollState::done; }, 10.0) ==
        WaitOutcome::done);
  CHECK(polls == 5);
  polls = 0;
  CHECK(dist::detail::wait_for([&] { return ++polls < 3 ? PollState::pending : PollState::failed; }, 10.0) ==
        WaitOutcome::failed);
  CHECK(polls == 3);
  auto start = Clock::now();
  CHECK(dist::detail::wait_for([] { return PollState::pending; }, 0.05) == WaitOutcome::timed_out);
  const double waited = std::chrono::duration<double>(Clock::now() - start).count();
  CHECK(waited >= 0.05);
  CHECK(waited < 5.0);
  // Timeout 0: no deadline; the operation's own end (here 30 ms later) ends the wait.
  start = Clock::now();
  CHECK(dist::detail::wait_for(
            [&] { return Clock::now() - start < std::chrono::milliseconds(30) ? PollState::pending : PollState::done; },
            0.0) == WaitOutcome::done);
}

TEST_CASE("NcclCommunicator's argument checks: bucket capacity and broadcast root") {
  std::vector<float> a(3), b(5);
  const std::span<float> pieces[] = {a, b};
  CHECK_NOTHROW(dist::NcclCommunicator::check_bucket(pieces, 8));
  CHECK_THROWS_WITH_AS(dist::NcclCommunicator::check_bucket(pieces, 7),
                       doctest::Contains("a bucket of 8 floats exceeds the 7 reserved"), std::logic_error);
  CHECK_NOTHROW(dist::NcclCommunicator::check_root(1, 2));
  CHECK_THROWS_WITH_AS(dist::NcclCommunicator::check_root(2, 2), doctest::Contains("root 2 is not a rank of 2"),
                       std::invalid_argument);
  CHECK_THROWS_AS(dist::NcclCommunicator::check_root(-1, 2), std::invalid_argument);
}

TEST_CASE("DataParallel hands a device-style communicator the network's context and buckets as for MPI") {
  using Net = TinyNet<0.0>;
  auto net = std::make_unique<Net>(7);
  auto reference = std::make_unique<Net>(7);
  vgg::Adam adam({.lr = 1e-2f}), reference_adam({.lr = 1e-2f});
  dist::DataParallel<Net, RecordingComm> dp(*net, {}, kSmallBuckets);
  dist::DataParallel reference_dp(*reference, {}, kSmallBuckets);
  CHECK(dp.communicator().ctx_ == &net->context());
  const std::size_t bucket = dp.bucket_floats();
  REQUIRE(bucket < std::size_t(Net::num_params));
  const GlobalBatch batch(4 * std::size_t(world_size()), 1);
  const dist::Shard mine = dp.shard(batch.labels.size());
  dp.step(adam, batch.images(mine), batch.labels_of(mine));
  reference_dp.step(reference_adam, batch.images(mine), batch.labels_of(mine));
  // Every bucket but the last is full; the pieces are the gradients, in network order, once each.
  const auto& buckets = dp.communicator().bucket_sizes_;
  REQUIRE(buckets.size() >= 2);
  for (std::size_t i = 0; i + 1 < buckets.size(); ++i) CHECK(buckets[i] == bucket);
  CHECK(buckets.back() <= bucket);
  std::vector<const float*> expected_starts;
  std::size_t total = 0;
  net->for_each_parameter_data([&](std::span<float>, std::span<float> grad) {
    expected_starts.push_back(grad.data());
    total += grad.size();
  });
  CHECK(total == std::size_t(Net::num_params));
  const auto& pieces = dp.communicator().pieces_;
  const auto& sizes = dp.communicator().piece_sizes_;
  std::size_t covered = 0, tensor = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    if (tensor < expected_starts.size() && pieces[i] == expected_starts[tensor]) ++tensor;  // a tensor's first piece
    covered += sizes[i];
  }
  CHECK(tensor == expected_starts.size());
  CHECK(covered == total);
  // The same reduction as MpiCommunicator's: the same bits.
  CHECK(host_params(*net) == host_params(*reference));
  CHECK(dp.in_sync());
}

TEST_CASE("NcclCommunicator offers in-place overlap buckets; MpiCommunicator staged ones") {
  using Net = TinyNet<0.0>;
  static_assert(dist::DataParallel<Net::on<Gpu>, dist::NcclCommunicator>::overlaps_in_place(),
                "DataParallel must see NcclCommunicator's start_bucket_in_place");
  static_assert(!dist::DataParallel<Net>::overlaps_in_place(), "MpiCommunicator overlaps through host staging");
  CHECK(dist::DataParallel<Net::on<Gpu>, dist::NcclCommunicator>::overlaps_in_place());
}

TEST_CASE("use_local_gpu without a GPU says why; with one it picks a device") {
  if (const std::string problem = vgg::cuda::device_problem(); !problem.empty()) {
    CHECK_THROWS_WITH_AS(dist::use_local_gpu(), doctest::Contains(problem.c_str()), dist::Error);
  } else {
    int devices = 0;
    REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
    try {
      const int device = dist::use_local_gpu();
      CHECK(device >= 0);
      CHECK(device < devices);
    } catch (const dist::Error& e) {  // more ranks on this host than GPUs: the message says so
      CHECK(std::string(e.what()).find("NCCL needs one GPU per rank") != std::string::npos);
    }
  }
}

}  // TEST_SUITE("host")

TEST_SUITE("device") {

TEST_CASE("NCCL data-parallel training ends with the CPU MPI path's weights (Adam, dropout off)") {
  if (no_gpu_per_rank()) return;
  using Arch = TinyNet<0.0>;
  using GpuNet = Arch::on<Gpu>;
  const int ranks = world_size();
  auto gpu = std::make_unique<GpuNet>(7);
  auto cpu = std::make_unique<Arch>(7);
  const auto initial = host_params(*cpu);
  // eps well above float noise: the first Adam steps are lr * sign(g) (see test_cuda_device).
  const vgg::AdamOptions options{.lr = 1e-2f, .eps = 1e-3f};
  vgg::Adam<Gpu> gpu_adam(options);
  vgg::Adam<vgg::cpu::Backend> cpu_adam(options);
  dist::DataParallel<GpuNet, dist::NcclCommunicator> gpu_dp(*gpu, {.settings = {{"test", "nccl"}}}, kSmallBuckets);
  dist::DataParallel cpu_dp(*cpu, {.settings = {{"test", "nccl"}}}, kSmallBuckets);
  CHECK(gpu_dp.bucket_floats() < std::size_t(Arch::num_params));
  for (std::uint64_t step = 0; step < 4; ++step) {
    const GlobalBatch batch(4 * std::size_t(ranks), step);
    const dist::Shard mine = gpu_dp.shard(batch.labels.size());
    const dist::StepResult g = gpu_dp.step(gpu_adam, batch.images(mine), batch.labels_of(mine));
    const dist::StepResult c = cpu_dp.step(cpu_adam, batch.images(mine), batch.labels_of(mine));
    CHECK(g.samples == c.samples);
    CHECK(g.loss == doctest::Approx(c.loss).epsilon(1e-4));
  }
  const auto on_gpu = host_params(*gpu), on_cpu = host_params(*cpu);
  CHECK(relative_difference(on_cpu, initial) > 1e-3f);  // the steps moved the weights
  CHECK(relative_difference(on_cpu, on_gpu) <= 1e-4f);
  CHECK(gpu_dp.in_sync());
  CHECK(gpu_adam.steps() == 4);
}

TEST_CASE("with dropout, uneven and empty shards (SGD), NCCL ranks stay bit-identical and follow the CPU") {
  if (no_gpu_per_rank()) return;
  using Arch = TinyNet<0.5>;
  using GpuNet = Arch::on<Gpu>;
  const int ranks = world_size();
  // Different initial weights per rank: the first step must take the root's (ncclBroadcast).
  auto gpu = std::make_unique<GpuNet>(11 + std::uint64_t(world_rank()));
  auto cpu = std::make_unique<Arch>(11);
  const vgg::SgdOptions options{.lr = 0.05f, .momentum = 0.9f};
  vgg::Sgd<Gpu> gpu_sgd(options);
  vgg::Sgd<vgg::cpu::Backend> cpu_sgd(options);
  dist::DataParallel<GpuNet, dist::NcclCommunicator> gpu_dp(*gpu, {}, kSmallBuckets);
  dist::DataParallel cpu_dp(*cpu, {}, kSmallBuckets);
  // 2 ranks + 1 sample: shards of 2 and 1; then 1 sample: rank 1's shard is empty (pre_scale 0).
  const std::size_t sizes[] = {std::size_t(2 * ranks + 1), 3, 1, std::size_t(ranks + 1)};
  std::uint64_t step = 0;
  for (const std::size_t global : sizes) {
    const GlobalBatch batch(global, 50 + step++);
    const dist::Shard mine = gpu_dp.shard(global);
    const dist::StepResult g = gpu_dp.step(gpu_sgd, batch.images(mine), batch.labels_of(mine));
    const dist::StepResult c = cpu_dp.step(cpu_sgd, batch.images(mine), batch.labels_of(mine));
    CHECK(g.loss == doctest::Approx(c.loss).epsilon(1e-4));
    CHECK(gpu_dp.in_sync());
  }
  // The masks are the CPU's bit for bit, so the CPU run is the reference with dropout on too.
  CHECK(relative_difference(host_params(*cpu), host_params(*gpu)) <= 1e-4f);
  CHECK(gpu->seed() == dist::dropout_seed(11, gpu_dp.rank()));
}

TEST_CASE("NCCL overlap on and off: the same bits, on every rank, near the CPU (dropout, uneven and empty shards)") {
  if (no_gpu_per_rank()) return;
  using Arch = TinyNet<0.5>;
  using GpuNet = Arch::on<Gpu>;
  const int ranks = world_size();
  const std::size_t sizes[] = {std::size_t(2 * ranks + 1), 3, 1, std::size_t(ranks + 1)};
  auto run = [&](dist::Overlap mode) {
    auto gpu = std::make_unique<GpuNet>(13);
    vgg::Sgd<Gpu> sgd({.lr = 0.05f, .momentum = 0.9f});
    // Buckets of 250 floats: dozens in flight at once, boundaries inside tensors.
    dist::DataParallel<GpuNet, dist::NcclCommunicator> dp(
        *gpu, {}, {.bucket_bytes = 250 * sizeof(float), .timeout_seconds = 60.0, .overlap = mode});
    CHECK(dp.overlapping() == (mode == dist::Overlap::on));
    if (mode == dist::Overlap::on) CHECK(dp.overlap_buckets() > 20);
    std::uint64_t step = 0;
    for (const std::size_t global : sizes) {
      const GlobalBatch batch(global, 80 + step++);
      const dist::Shard mine = dp.shard(global);
      dp.step(sgd, batch.images(mine), batch.labels_of(mine));
      if (mode == dist::Overlap::on && mine.size() > 0) CHECK(dp.buckets_started_in_backward() == dp.overlap_buckets());
      CHECK(dp.in_sync());
    }
    return host_params(*gpu);
  };
  auto cpu = std::make_unique<Arch>(13);
  vgg::Sgd<vgg::cpu::Backend> cpu_sgd({.lr = 0.05f, .momentum = 0.9f});
  dist::DataParallel cpu_dp(*cpu, {}, kSmallBuckets);
  std::uint64_t step = 0;
  for (const std::size_t global : sizes) {
    const GlobalBatch batch(global, 80 + step++);
    const dist::Shard mine = cpu_dp.shard(global);
    cpu_dp.step(cpu_sgd, batch.images(mine), batch.labels_of(mine));
  }
  const auto on = run(dist::Overlap::on), off = run(dist::Overlap::off);
  // With at most 2 ranks each element's sum is one addition of pre-scaled values, whatever the
  // bucket boundaries: the two modes agree bit for bit.
  if (ranks <= 2) CHECK(on == off);
  CHECK(relative_difference(host_params(*cpu), on) <= 1e-4f);
}

TEST_CASE("a steady overlapped NCCL step allocates no device memory through vgg") {
  if (no_gpu_per_rank()) return;
  using GpuNet = TinyNet<0.5>::on<Gpu>;
  auto net = std::make_unique<GpuNet>(2);
  vgg::Adam<Gpu> adam({.lr = 1e-3f});
  dist::DataParallel<GpuNet, dist::NcclCommunicator> dp(
      *net, {}, {.bucket_bytes = 250 * sizeof(float), .timeout_seconds = 60.0, .overlap = dist::Overlap::on});
  const GlobalBatch batch(4 * std::size_t(world_size()), 1);
  const dist::Shard mine = dp.shard(batch.labels.size());
  for (int i = 0; i < 2; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  const long before = vgg::cuda::device_allocations();
  for (int i = 0; i < 3; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  CHECK(vgg::cuda::device_allocations() - before == 0);
  CHECK(dp.in_sync());
}

TEST_CASE("a steady NCCL data-parallel step allocates no device memory through vgg") {
  if (no_gpu_per_rank()) return;
  using GpuNet = TinyNet<0.5>::on<Gpu>;
  auto net = std::make_unique<GpuNet>(2);
  vgg::Adam<Gpu> adam({.lr = 1e-3f});
  dist::DataParallel<GpuNet, dist::NcclCommunicator> dp(*net, {}, kSmallBuckets);
  const GlobalBatch batch(4 * std::size_t(world_size()), 1);
  const dist::Shard mine = dp.shard(batch.labels.size());
  for (int i = 0; i < 2; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  const long before = vgg::cuda::device_allocations();
  for (int i = 0; i < 3; ++i) dp.step(adam, batch.images(mine), batch.labels_of(mine));
  CHECK(vgg::cuda::device_allocations() - before == 0);
}

TEST_CASE("a collective that does not complete in time aborts the NCCL communicator and names the call") {
  if (no_gpu_per_rank()) return;
  if (world_size() != 1) {
    MESSAGE("one rank only: a stalled stream under several ranks would leave peers inside NCCL kernels");
    return;
  }
  vgg::cuda::Context ctx;
  vgg::cuda::Buffer<float> device(16);
  REQUIRE(cudaMemsetAsync(device.data(), 0, 16 * sizeof(float), ctx.stream()) == cudaSuccess);
  const std::span<float> pieces[] = {device.span(16)};
  {
    dist::NcclCommunicator comm(ctx, MPI_COMM_WORLD, 0.5);
    comm.reserve(16);
    CHECK(comm.device() >= 0);
    CHECK_NOTHROW(comm.allreduce_sum(pieces, 0.5f, "gradient allreduce", 1));
    // A host function holds the stream for 2 s: the next allreduce cannot complete within 0.5 s.
    REQUIRE(cudaLaunchHostFunc(ctx.stream(), [](void*) { std::this_thread::sleep_for(std::chrono::seconds(2)); },
                               nullptr) == cudaSuccess);
    CHECK_THROWS_WITH_AS(comm.allreduce_sum(pieces, 0.5f, "gradient allreduce", 2),
                         doctest::Contains("ncclAllReduce (gradient allreduce) of step 2 has not completed after"),
                         dist::Error);
    CHECK(dist::detail::communication_failed.load());
  }  // the aborted communicator is not finalized
  ctx.synchronize();  // the stream drains: nothing was left waiting for a peer
  // This rank provoked the failure alone and recovered: the job may end normally (Environment
  // would otherwise end it with MPI_Abort).
  dist::detail::communication_failed.store(false);
}

TEST_CASE("an overlapped bucket that does not complete in time aborts the NCCL communicator at the wait") {
  if (no_gpu_per_rank()) return;
  if (world_size() != 1) {
    MESSAGE("one rank only: a stalled stream under several ranks would leave peers inside NCCL kernels");
    return;
  }
  vgg::cuda::Context ctx;
  vgg::cuda::Buffer<float> device(32);
  REQUIRE(cudaMemsetAsync(device.data(), 0, 32 * sizeof(float), ctx.stream()) == cudaSuccess);
  const std::span<float> first[] = {device.span(32).subspan(0, 16)};
  const std::span<float> second[] = {device.span(32).subspan(16, 10), device.span(32).subspan(26, 6)};
  {
    dist::NcclCommunicator comm(ctx, MPI_COMM_WORLD, 0.5);
    comm.reserve(32);
    const std::size_t buckets[] = {16, 16};
    comm.reserve_buckets(buckets);
    CHECK_FALSE(comm.spans_hosts());
    CHECK_THROWS_WITH_AS(comm.start_bucket_in_place(2, first, 1.0f, "gradient allreduce (overlapped)", 1),
                         doctest::Contains("bucket 2 of 2 reserved"), std::logic_error);
    comm.start_bucket_in_place(0, first, 0.5f, "gradient allreduce (overlapped)", 1);
    CHECK_THROWS_WITH_AS(comm.start_bucket_in_place(0, first, 0.5f, "gradient allreduce (overlapped)", 1),
                         doctest::Contains("bucket 0 is still in flight"), std::logic_error);
    comm.start_bucket_in_place(1, second, 0.5f, "gradient allreduce (overlapped)", 1);
    CHECK_NOTHROW(comm.progress("gradient allreduce (overlapped)", 1));
    CHECK_NOTHROW(comm.wait_buckets("gradient allreduce (overlapped)", 1));
    // The compute stream holds for 2 s before the next bucket's pieces are written: its reduction,
    // which waits for them on the communication stream, cannot complete within 0.5 s.
    REQUIRE(cudaLaunchHostFunc(ctx.stream(), [](void*) { std::this_thread::sleep_for(std::chrono::seconds(2)); },
                               nullptr) == cudaSuccess);
    comm.start_bucket_in_place(0, first, 0.5f, "gradient allreduce (overlapped)", 2);
    comm.start_bucket_in_place(1, second, 0.5f, "gradient allreduce (overlapped)", 2);
    CHECK_THROWS_WITH_AS(
        comm.wait_buckets("gradient allreduce (overlapped)", 2),
        doctest::Contains("ncclAllReduce (overlapped) (gradient allreduce (overlapped)) of step 2 has not completed after"),
        dist::Error);
    CHECK(dist::detail::communication_failed.load());
  }
  ctx.synchronize();
  dist::detail::communication_failed.store(false);
}

}  // TEST_SUITE("device")

int main(int argc, char** argv) {
  dist::Environment mpi(argc, argv);
  doctest::Context context(argc, argv);
  const int failed = context.run();
  // Every rank's verdict decides: a failure on any rank fails the job; else a skip skips it.
  int verdict[2] = {failed != 0 ? 1 : 0, device_skipped ? 1 : 0};
  MPI_Allreduce(MPI_IN_PLACE, verdict, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (verdict[0] != 0) return 1;
  return verdict[1] != 0 ? kSkipped : 0;
}
