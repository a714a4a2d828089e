#pragma once
// Data-parallel training on GPUs: vgg::distributed::NcclCommunicator, the Comm of
// DataParallel<Net, NcclCommunicator> for networks on vgg::cuda::Backend (link vgg::distributed_cuda,
// which exists when CMake finds MPI, the CUDA backend and NCCL).
//
// MPI bootstraps NCCL and keeps the small host-side collectives (the start-up agreement check, the
// loss sums, the step counters): rank 0 draws an ncclUniqueId, MPI broadcasts it, every rank joins
// with ncclCommInitRankConfig. The gradients and the weights never leave the device: each bucket's
// pieces are reduced in place by one ncclAllReduce per piece, grouped (ncclGroupStart/End), on the
// backend's stream, with a pre-multiplied sum (ncclRedOpCreatePreMulSum) that weights each rank by
// its share of the global batch, as MpiCommunicator's pre_scale does.
//
// Faults: the NCCL communicator is non-blocking (ncclConfig_t::blocking = 0), so that no NCCL call
// can wait forever inside NCCL. After every enqueue the host waits for the collective (an event on
// the stream) while polling ncclCommGetAsyncError: an asynchronous error (a peer lost, a network
// failure) or a collective that has not completed after the timeout aborts the NCCL communicator
// (ncclCommAbort) and throws vgg::distributed::Error naming the call, the step and NCCL's words;
// vgg::distributed::Environment then ends the job with MPI_Abort. The MPI half keeps its own
// watchdog (MpiCommunicator), with the same timeout.
//
// Overlap (DataParallel with Options::overlap): start_bucket_in_place reduces a bucket's pieces in
// place on a communication stream of its own, behind an event recorded on the compute stream when
// the backward hook starts it; wait_buckets joins the streams and waits on the host as above.

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "vgg/cuda/check.hpp"
#include "vgg/cuda/context.hpp"
#include "vgg/distributed.hpp"

// Non-blocking communicators and ncclCommGetAsyncError on them: NCCL 2.14.
static_assert(NCCL_VERSION_CODE >= 21400, "vgg::distributed::NcclCommunicator needs NCCL 2.14 or newer");

namespace vgg::distributed {

namespace detail {

/// The enumerator's name of an NCCL status ("ncclRemoteError"), or its number when unknown.
inline std::string nccl_result_name(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult_t " + std::to_string(int(result));
  }
}

/// The message of a failed NCCL call: rank, call, purpose, step, the status's name and NCCL's text
/// for it, and NCCL's last error for the communicator when it has one.
inline std::string nccl_failure_message(int rank, const char* call, const char* what, std::uint64_t step,
                                        ncclResult_t result, const std::string& last_error) {
  std::string text = "vgg::distributed: rank " + std::to_string(rank) + ": " + call + " (" + what +
                     ") failed in step " + std::to_string(step) + ": " + nccl_result_name(result) + " (" +
                     ncclGetErrorString(result) + ")";
  if (!last_error.empty()) text += "; NCCL: " + last_error;
  return text + ". The job stops; resume from the last checkpoint.";
}

/// How a wait ended.
enum class WaitOutcome { done, failed, timed_out };
/// What one look at a pending operation found.
enum class PollState { done, pending, failed };

/// Calls poll() until it reports done or failed, or until timeout_seconds have passed (<= 0:
/// never times out). Yields the core for the first 2 ms (a bucket's allreduce usually ends within
/// that), then sleeps 200 us between looks, so that a long wait costs no core.
template <class Poll>
WaitOutcome wait_for(Poll&& poll, double timeout_seconds) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    const PollState state = poll();
    if (state == PollState::done) return WaitOutcome::done;
    if (state == PollState::failed) return WaitOutcome::failed;
    const auto now = Clock::now();
    if (timeout_seconds > 0 && now >= deadline) return WaitOutcome::timed_out;
    if (now - start < std::chrono::milliseconds(2)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
}

}  // namespace detail

/// Makes this rank's GPU the current device: local rank L on its host (ranks sharing memory, in
/// MPI's order) takes device L. Collective over `comm`; call it before constructing the network,
/// whose stream belongs to the device current at construction. Returns the device.
/// throws: Error when no CUDA device can be used, or when a host runs more ranks than it has GPUs
/// (NCCL needs one GPU per rank).
inline int use_local_gpu(MPI_Comm comm = MPI_COMM_WORLD) {
  MPI_Comm local = MPI_COMM_NULL;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS)
    throw Error("vgg::distributed::use_local_gpu: MPI_Comm_split_type failed");
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);
  MPI_Comm_free(&local);
  const int rank = detail::comm_rank(comm);
  if (const std::string problem = cuda::device_problem(); !problem.empty())
    throw Error("vgg::distributed: rank " + std::to_string(rank) + ": " + problem);
  int devices = 0;
  VGG_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (local_size > devices) {
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int length = 0;
    MPI_Get_processor_name(host, &length);
    throw Error("vgg::distributed: rank " + std::to_string(rank) + ": " + std::to_string(local_size) +
                " ranks run on host " + std::string(host, std::size_t(length)) + ", which has " +
                std::to_string(devices) + " CUDA device(s); NCCL needs one GPU per rank: start at most " +
                std::to_string(devices) + " ranks per host");
  }
  VGG_CUDA_CHECK(cudaSetDevice(local_rank));
  return local_rank;
}

/// NCCL collectives on the device memory of a vgg::cuda network, bootstrapped and complemented by
/// MPI (see the top of this file). Collective construction and destruction.
class NcclCommunicator {
 public:
  /// Gradient pieces, weights and optimizer state this communicator reduces: device memory.
  static constexpr bool host_memory = false;

  /// requires: MPI initialised (Environment); `ctx` is the network's context (its stream orders the
  /// collectives after the backward pass) and outlives this object; one GPU per rank.
  /// Collective over `parent`. throws: Error naming the call that failed.
  NcclCommunicator(cuda::Context& ctx, MPI_Comm parent = MPI_COMM_WORLD, double timeout_seconds = 300.0)
      : host_(parent, timeout_seconds), stream_(ctx.stream()), timeout_seconds_(timeout_seconds) {
    // NCCL binds a communicator to the current device: make it the stream's.
    VGG_CUDA_CHECK(cudaStreamGetDevice(stream_, &device_));
    VGG_CUDA_CHECK(cudaSetDevice(device_));
    cudaEvent_t done = nullptr;
    VGG_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    done_.reset(done);
    // The id travels with rank 0's status, so that a failed ncclGetUniqueId stops every rank.
    std::int64_t message[1 + NCCL_UNIQUE_ID_BYTES / 8] = {};
    static_assert(sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES && NCCL_UNIQUE_ID_BYTES % 8 == 0);
    if (rank() == 0) {
      ncclUniqueId id;
      message[0] = ncclGetUniqueId(&id);
      std::memcpy(&message[1], &id, sizeof id);
    }
    host_.broadcast(std::span<std::int64_t>(message), 0, "ncclUniqueId broadcast", 0);
    if (message[0] != ncclSuccess)
      throw Error(detail::nccl_failure_message(0, "ncclGetUniqueId", "start-up", 0, ncclResult_t(message[0]), {}));
    ncclUniqueId id;
    std::memcpy(&id, &message[1], sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    config.commName = "vgg::distributed";
    const ncclResult_t init = ncclCommInitRankConfig(&comm_, size(), id, rank(), &config);
    if (comm_ == nullptr) fail(init == ncclSuccess ? ncclInternalError : init, "ncclCommInitRankConfig", "start-up", 0);
    settle(init, "ncclCommInitRankConfig", "start-up", 0);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() {
    if (comm_ == nullptr || aborted_) return;
    if (premul_valid_) (void)ncclRedOpDestroy(premul_, comm_);
    // Finalize flushes this rank's part and may wait for peers: after a failure, or when it does
    // not end within the timeout, abort instead.
    bool flushed = false;
    if (!detail::communication_failed.load()) {
      const ncclResult_t finalizing = ncclCommFinalize(comm_);
      flushed = (finalizing == ncclSuccess || finalizing == ncclInProgress) &&
                detail::wait_for([&] { return comm_state(); }, timeout_seconds_) == detail::WaitOutcome::done;
    }
    (void)(flushed ? ncclCommDestroy(comm_) : ncclCommAbort(comm_));
  }

  int rank() const { return host_.rank(); }
  int size() const { return host_.size(); }
  /// The MPI communicator of the host-side collectives.
  MPI_Comm comm() const { return host_.comm(); }
  ncclComm_t nccl() const { return comm_; }
  int device() const { return device_; }
  double timeout_seconds() const { return timeout_seconds_; }

  /// ensures: allreduce_sum takes buckets of up to `floats` floats (the pieces are reduced in place:
  /// nothing is allocated).
  void reserve(std::size_t floats) { capacity_ = floats; }
  std::size_t capacity() const { return capacity_; }

  /// Replaces each piece (device memory, on the context's device) by the sum over ranks of
  /// pre_scale * piece (pre_scale 0: this rank adds zeros, whatever its pieces hold), in stream
  /// order after the work queued before; returns when the reduction has completed.
  /// requires: the pieces total at most capacity() floats (std::logic_error otherwise).
  void allreduce_sum(std::span<const std::span<float>> pieces, float pre_scale, const char* what,
                     std::uint64_t step) {
    check_bucket(pieces, capacity_);
    enqueue_allreduce(pieces, pre_scale, stream_, what, step);
    complete("ncclAllReduce", what, step);
  }

  /// Collective: whether the ranks run on more than one host (MPI), where Overlap::automatic
  /// reduces during backward.
  bool spans_hosts() { return host_.spans_hosts(); }

  // ---- non-blocking buckets, reduced in place (DataParallel with overlap) ----
  // Bucket k runs on a communication stream of its own, after an event recorded on the compute
  // stream when it is started: the backward kernels of earlier layers keep the compute stream busy
  // meanwhile. wait_buckets joins the two streams again and waits on the host for the collectives,
  // with the timeout and the abort of the blocking calls.

  /// Allocates the communication stream (once) and one event per bucket; bucket k then takes
  /// pieces of up to sizes[k] floats. Nothing is allocated per step.
  void reserve_buckets(std::span<const std::size_t> sizes) {
    VGG_CUDA_CHECK(cudaSetDevice(device_));
    if (!comm_stream_) {
      cudaStream_t stream = nullptr;
      VGG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      comm_stream_.reset(stream);
      cudaEvent_t joined = nullptr;
      VGG_CUDA_CHECK(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming));
      joined_.reset(joined);
    }
    bucket_sizes_.assign(sizes.begin(), sizes.end());
    in_flight_.assign(sizes.size(), 0);
    ready_.clear();
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      cudaEvent_t ready = nullptr;
      VGG_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
      ready_.emplace_back(ready);
    }
  }

  /// Starts replacing each piece (device memory) by the sum over ranks of pre_scale * piece, in
  /// place, once the work queued on the compute stream so far (the backward kernels that wrote the
  /// pieces) has run. Every rank starts the same buckets in the same order. requires: bucket k is
  /// not in flight and its pieces total at most the size reserved for it (std::logic_error).
  void start_bucket_in_place(std::size_t k, std::span<const std::span<float>> pieces, float pre_scale,
                             const char* what, std::uint64_t step) {
    if (k >= ready_.size())
      throw std::logic_error("vgg::distributed::NcclCommunicator: bucket " + std::to_string(k) + " of " +
                             std::to_string(ready_.size()) + " reserved (reserve_buckets() first)");
    if (in_flight_[k] != 0)
      throw std::logic_error("vgg::distributed::NcclCommunicator: bucket " + std::to_string(k) + " is still in flight");
    check_bucket(pieces, bucket_sizes_[k]);
    cudaStream_t comm_stream = comm_stream_.get();
    VGG_CUDA_CHECK(cudaEventRecord(ready_[k].get(), stream_));
    VGG_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready_[k].get(), 0));
    in_flight_[k] = 1;
    any_in_flight_ = true;
    enqueue_allreduce(pieces, pre_scale, comm_stream, what, step);
  }

  /// Cheap and non-blocking: fails (Error, communicator aborted) when NCCL reports an asynchronous
  /// error for the buckets in flight; NCCL's own threads and the GPU move them on.
  void progress(const char* what, std::uint64_t step) {
    if (comm_state() == detail::PollState::failed) fail(last_failure_, "ncclCommGetAsyncError", what, step);
  }

  /// Waits for every started bucket: the compute stream waits for the communication stream (so the
  /// optimizer reads the sums), and the host waits for the collectives, watching NCCL's errors and
  /// the timeout (a dead peer aborts the communicator and throws Error naming the step).
  void wait_buckets(const char* what, std::uint64_t step) {
    if (!any_in_flight_) return;
    VGG_CUDA_CHECK(cudaEventRecord(joined_.get(), comm_stream_.get()));
    VGG_CUDA_CHECK(cudaStreamWaitEvent(stream_, joined_.get(), 0));
    await_event(joined_.get(), "ncclAllReduce (overlapped)", what, step);
    std::fill(in_flight_.begin(), in_flight_.end(), 0);
    any_in_flight_ = false;
  }

  /// Sums `values` (host memory) over ranks, in place (MPI).
  void allreduce_sum(std::span<double> values, const char* what, std::uint64_t step) {
    host_.allreduce_sum(values, what, step);
  }

  /// (minimum, maximum) of `value` over ranks (MPI).
  std::pair<std::uint64_t, std::uint64_t> min_max(std::uint64_t value, const char* what, std::uint64_t step) {
    return host_.min_max(value, what, step);
  }

  /// Copies root's `data` (device memory: weights, optimizer state) to every rank, in place;
  /// returns when the copy has arrived. requires: 0 <= root < size() (std::invalid_argument).
  void broadcast(std::span<float> data, int root, const char* what, std::uint64_t step) {
    check_root(root, size());
    if (data.empty()) return;
    settle(ncclBroadcast(data.data(), data.data(), data.size(), ncclFloat32, root, comm_, stream_), "ncclBroadcast",
           what, step);
    complete("ncclBroadcast", what, step);
  }
  /// Copies root's `data` (host memory: counters) to every rank (MPI).
  void broadcast(std::span<std::int64_t> data, int root, const char* what, std::uint64_t step) {
    check_root(root, size());
    host_.broadcast(data, root, what, step);
  }

  /// Every rank's `text`, indexed by rank (MPI; start-up checks).
  std::vector<std::string> allgather(const std::string& text, const char* what) { return host_.allgather(text, what); }

  // ---- argument checks, public so that they are tested without a GPU ----

  /// requires: the pieces total at most `capacity` floats; else std::logic_error (DataParallel's
  /// buckets never do: a caller's bug).
  static void check_bucket(std::span<const std::span<float>> pieces, std::size_t capacity) {
    std::size_t n = 0;
    for (std::span<float> p : pieces) n += p.size();
    if (n > capacity)
      throw std::logic_error("vgg::distributed::NcclCommunicator::allreduce_sum: a bucket of " + std::to_string(n) +
                             " floats exceeds the " + std::to_string(capacity) + " reserved (reserve() first)");
  }
  /// requires: 0 <= root < size; else std::invalid_argument.
  static void check_root(int root, int size) {
    if (root < 0 || root >= size)
      throw std::invalid_argument("vgg::distributed::NcclCommunicator::broadcast: root " + std::to_string(root) +
                                  " is not a rank of " + std::to_string(size));
  }

 private:
  /// The communicator's state: done (ready for the next call), pending (a non-blocking call still
  /// in progress) or failed (an asynchronous error: last_failure_ says which).
  detail::PollState comm_state() {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t asked = ncclCommGetAsyncError(comm_, &state);
    if (asked != ncclSuccess) state = asked;
    if (state == ncclSuccess) return detail::PollState::done;
    if (state == ncclInProgress) return detail::PollState::pending;
    last_failure_ = state;
    return detail::PollState::failed;
  }

  /// After a call on the non-blocking communicator: waits until NCCL has taken it (ncclInProgress
  /// ends), or fails.
  void settle(ncclResult_t result, const char* call, const char* what, std::uint64_t step) {
    if (result == ncclSuccess) return;
    if (result != ncclInProgress) fail(result, call, what, step);
    await([&] { return comm_state(); }, call, what, step);
  }

  /// Waits until the collective just enqueued on the stream has completed, watching for NCCL's
  /// asynchronous errors and the timeout.
  void complete(const char* call, const char* what, std::uint64_t step) {
    VGG_CUDA_CHECK(cudaEventRecord(done_.get(), stream_));
    await_event(done_.get(), call, what, step);
  }

  /// Waits until `event` (recorded after collectives) has completed, watching for NCCL's
  /// asynchronous errors and the timeout.
  void await_event(cudaEvent_t done, const char* call, const char* what, std::uint64_t step) {
    await(
        [&] {
          const detail::PollState nccl = comm_state();
          if (nccl == detail::PollState::failed) return nccl;
          const cudaError_t event = cudaEventQuery(done);
          if (event == cudaSuccess) return detail::PollState::done;
          if (event == cudaErrorNotReady) return detail::PollState::pending;
          last_failure_ = ncclUnhandledCudaError;
          cuda_failure_ = std::string(cudaGetErrorName(event)) + " (" + cudaGetErrorString(event) + ") on the stream";
          return detail::PollState::failed;
        },
        call, what, step);
  }

  template <class Poll>
  void await(Poll&& poll, const char* call, const char* what, std::uint64_t step) {
    switch (detail::wait_for(poll, timeout_seconds_)) {
      case detail::WaitOutcome::done:
        return;
      case detail::WaitOutcome::failed:
        fail(last_failure_, call, what, step);
      case detail::WaitOutcome::timed_out: {
        abort_communicator();
        char seconds[32];
        std::snprintf(seconds, sizeof seconds, "%.1f", timeout_seconds_);
        throw Error("vgg::distributed: rank " + std::to_string(rank()) + ": " + call + " (" + what + ") of step " +
                    std::to_string(step) + " has not completed after " + seconds +
                    " s (the collective timeout); another rank has died or hangs. The NCCL communicator was "
                    "aborted (ncclCommAbort); the job stops; resume from the last checkpoint.");
      }
    }
  }

  /// Enqueues the in-place pre-multiplied sum of `pieces` on `stream` (one grouped ncclAllReduce
  /// per piece); returns once NCCL has taken the group, not when it has run.
  void enqueue_allreduce(std::span<const std::span<float>> pieces, float pre_scale, cudaStream_t stream,
                         const char* what, std::uint64_t step) {
    if (pre_scale == 0.0f) {
      // A rank without samples this step (or whose backward failed): its stale gradient (possibly
      // not finite, and 0 * NaN is NaN) must not count.
      for (std::span<float> p : pieces)
        if (!p.empty()) VGG_CUDA_CHECK(cudaMemsetAsync(p.data(), 0, p.size_bytes(), stream));
    }
    // Always the pre-multiplied sum, even for a scale of 1 or 0: every rank of a collective must
    // reduce with the same kind of operator, and the ranks' scales differ.
    const ncclRedOp_t op = premul_sum(pre_scale, step);
    settle(ncclGroupStart(), "ncclGroupStart", what, step);
    for (std::span<float> p : pieces) {
      if (p.empty()) continue;
      const ncclResult_t queued = ncclAllReduce(p.data(), p.data(), p.size(), ncclFloat32, op, comm_, stream);
      if (queued != ncclSuccess && queued != ncclInProgress) {
        (void)ncclGroupEnd();
        fail(queued, "ncclAllReduce", what, step);
      }
    }
    settle(ncclGroupEnd(), "ncclAllReduce", what, step);
  }

  /// The PreMulSum operator for `scale`, created once per distinct scale (a run's shards keep the
  /// same sizes, so usually once).
  ncclRedOp_t premul_sum(float scale, std::uint64_t step) {
    if (premul_valid_ && premul_scale_ == scale) return premul_;
    if (premul_valid_) {
      premul_valid_ = false;
      settle(ncclRedOpDestroy(premul_, comm_), "ncclRedOpDestroy", "gradient allreduce", step);
    }
    settle(ncclRedOpCreatePreMulSum(&premul_, &scale, ncclFloat32, ncclScalarHostImmediate, comm_),
           "ncclRedOpCreatePreMulSum", "gradient allreduce", step);
    premul_scale_ = scale;
    premul_valid_ = true;
    return premul_;
  }

  [[noreturn]] void fail(ncclResult_t result, const char* call, const char* what, std::uint64_t step) {
    std::string last = comm_ != nullptr ? std::string(ncclGetLastError(comm_)) : std::string();
    if (!cuda_failure_.empty()) last = cuda_failure_ + (last.empty() ? "" : "; " + last);
    abort_communicator();
    throw Error(detail::nccl_failure_message(rank(), call, what, step, result, last));
  }

  /// After a failure: peers may be gone, so nothing may wait for them any more.
  void abort_communicator() {
    detail::communication_failed.store(true);
    if (comm_ != nullptr && !aborted_) (void)ncclCommAbort(comm_);
    aborted_ = true;
  }

  struct EventDeleter {
    void operator()(cudaEvent_t e) const { (void)cudaEventDestroy(e); }
  };
  struct StreamDeleter {
    void operator()(cudaStream_t s) const { (void)cudaStreamDestroy(s); }
  };
  using Event = std::unique_ptr<CUevent_st, EventDeleter>;

  MpiCommunicator host_;
  cudaStream_t stream_;
  double timeout_seconds_;
  int device_ = 0;
  std::unique_ptr<CUevent_st, EventDeleter> done_;  // recorded after each collective
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
  ncclRedOp_t premul_{};
  float premul_scale_ = 0;
  bool premul_valid_ = false;
  std::size_t capacity_ = 0;
  // Overlap: the communication stream, each bucket's "pieces written" event on the compute stream,
  // and the event that joins the communication stream back into it.
  std::unique_ptr<CUstream_st, StreamDeleter> comm_stream_;
  std::vector<Event> ready_;
  Event joined_;
  std::vector<std::size_t> bucket_sizes_;
  std::vector<char> in_flight_;
  bool any_in_flight_ = false;
  ncclResult_t last_failure_ = ncclSuccess;
  std::string cuda_failure_;
};

}  // namespace vgg::distributed
