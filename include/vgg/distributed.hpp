#pragma once
// Data-parallel training over MPI (optional: link vgg::distributed, which exists when CMake finds
// MPI; nothing else in vgg includes this header).
//
// Every rank holds the whole network and optimizer. Each global batch is split into one shard per
// rank (shard_range); a rank runs forward and backward on its shard, the gradients of all ranks are
// averaged (weighted by shard size, so the result is the gradient of the global batch's mean loss)
// with MPI_Allreduce over a few-MB staging bucket allocated once, and every rank applies the same
// optimizer update. With Options::overlap the buckets are built in backward order (the classifier's
// gradients first) and each is reduced with MPI_Iallreduce as soon as the network's backward hook
// (backward_hook.hpp) reports all of its gradients final, while the earlier layers' backward runs. Ranks therefore hold identical weights after every step: the reduced gradient
// is the same bits everywhere (MPI reductions give every rank the same result for a given
// communicator and count; in_sync() checks it).
//
// Dropout: a mask bit is a hash of (seed, stream = step * 1024 + layer, element). Rank r trains
// with seed dropout_seed(base, r): rank 0 keeps the base seed (a 1-rank run draws the masks of a
// plain run), the others a derived one, so the ranks' shards get independent masks.
//
// Faults: the communicator returns MPI errors (MPI_ERRORS_RETURN) as vgg::distributed::Error, and a
// watchdog thread aborts the whole job with a message when one collective has waited longer than
// Options::timeout_seconds (a dead or stopped peer); the non-blocking reductions are watched from
// the MPI_Waitall that ends them. Checkpoints are written by rank 0 alone and
// atomically (io/checkpoint.hpp), so the last one stays good whatever happens to the job.
//
// The seam for other transports: DataParallel<Net, Comm> talks to its communicator through
// rank(), size(), reserve(floats), allreduce_sum(pieces, pre_scale, what, step) on gradient pieces in
// the backend's memory, allreduce_sum(doubles), broadcast(floats / int64s), min_max(uint64) and
// allgather(string); for overlap, also spans_hosts(), reserve_buckets(sizes), progress(what, step),
// wait_buckets(what, step) and either bucket(k) (host staging) with start_bucket(k, what, step), or
// start_bucket_in_place(k, pieces, pre_scale, what, step) on the gradient pieces themselves (then a
// host allreduce after the wait carries the failure flag). MpiCommunicator reduces host memory
// (staged); NcclCommunicator (<vgg/distributed/nccl.hpp>, target vgg::distributed_cuda) reduces a
// vgg::cuda network's device memory (in place, overlapped on a stream of its own). A Comm
// constructible from (Net::backend::Context&, MPI_Comm, double) is given the network's context.

// Only MPI's C API is used: skip the C++ bindings (removed in MPI-3) that Open MPI and MPICH would
// otherwise pull in, with their warnings under -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "vgg/backward_hook.hpp"
#include "vgg/buffer.hpp"
#include "vgg/context.hpp"
#include "vgg/loss.hpp"
#include "vgg/optim/adam.hpp"
#include "vgg/optim/sgd.hpp"
#include "vgg/random.hpp"

namespace vgg::distributed {

/// A failed collective or ranks that disagree. The message names the rank, the call and the step.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Exit status of a job the watchdog aborted.
inline constexpr int kWatchdogExitCode = 3;

namespace detail {

/// Set once a collective failed: MPI_Finalize would wait for the dead peer, so Environment aborts.
inline std::atomic<bool> communication_failed{false};

inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, std::size_t(length));
}

inline int comm_rank(MPI_Comm comm) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}

}  // namespace detail

/// MPI for the lifetime of the object: initialises it (asking for MPI_THREAD_MULTIPLE, so that the
/// watchdog may call MPI_Abort while the main thread waits inside a collective) unless the program
/// already did, and finalises what it initialised. After a failed collective, or when destroyed by
/// an exception, it aborts the job instead (MPI_Finalize would wait for a dead peer).
class Environment {
 public:
  Environment(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Query_thread(&thread_level_);
    } else {
      if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level_) != MPI_SUCCESS)
        throw Error("vgg::distributed: MPI_Init_thread failed");
      owns_ = true;
    }
    uncaught_at_start_ = std::uncaught_exceptions();
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  ~Environment() {
    if (!owns_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (detail::communication_failed.load() || std::uncaught_exceptions() > uncaught_at_start_) {
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
  }

  /// MPI's thread support level (MPI_THREAD_MULTIPLE when the watchdog can call MPI_Abort).
  int thread_level() const { return thread_level_; }
  static int world_rank() { return detail::comm_rank(MPI_COMM_WORLD); }
  static int world_size() {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
  }
  /// Ends every rank of the job now with `code` after writing `message` (when not empty) to stderr.
  [[noreturn]] static void abort(int code, const std::string& message = {}) {
    if (!message.empty()) std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  int thread_level_ = MPI_THREAD_SINGLE;
  int uncaught_at_start_ = 0;
  bool owns_ = false;
};

/// Aborts the job when one collective waits longer than a timeout: a peer that died without the
/// MPI runtime noticing (a lost host, a network partition) or that hangs (stopped, deadlocked)
/// would otherwise keep every other rank waiting forever.
class Watchdog {
 public:
  /// timeout_seconds <= 0: never fires (no thread is started).
  Watchdog(double timeout_seconds, MPI_Comm abort_comm) : timeout_seconds_(timeout_seconds), comm_(abort_comm) {
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    can_call_mpi_ = level == MPI_THREAD_MULTIPLE;
    rank_ = detail::comm_rank(abort_comm);
    if (timeout_seconds_ > 0) thread_ = std::thread([this] { watch(); });
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  /// Disarms the watchdog when it leaves scope.
  class Armed {
   public:
    explicit Armed(Watchdog* dog) : dog_(dog) {}
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;
    ~Armed() {
      if (dog_) dog_->disarm();
    }

   private:
    Watchdog* dog_;
  };

  /// Starts the clock for one collective; `what` must outlive the returned guard (a literal).
  [[nodiscard]] Armed arm(const char* what, std::uint64_t step) {
    if (!thread_.joinable()) return Armed(nullptr);
    {
      std::lock_guard lock(mutex_);
      what_ = what;
      step_ = step;
      deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(timeout_seconds_));
      armed_ = true;
    }
    changed_.notify_all();
    return Armed(this);
  }
  double timeout_seconds() const { return timeout_seconds_; }

 private:
  using Clock = std::chrono::steady_clock;

  void disarm() {
    std::lock_guard lock(mutex_);
    armed_ = false;
  }

  void watch() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (!armed_) {
        changed_.wait(lock);
      } else if (Clock::now() < deadline_) {
        changed_.wait_until(lock, deadline_);
      } else {
        fire();
      }
    }
  }

  [[noreturn]] void fire() {
    detail::communication_failed.store(true);
    std::fprintf(stderr,
                 "vgg::distributed: rank %d: %s of step %llu has not completed after %.1f s (the collective "
                 "timeout); another rank has died or hangs. Aborting the whole job; resume from the last "
                 "checkpoint.\n",
                 rank_, what_, static_cast<unsigned long long>(step_), timeout_seconds_);
    std::fflush(stdout);
    std::fflush(stderr);
    // MPI_Abort kills every rank; without MPI_THREAD_MULTIPLE it may not be called from this thread,
    // and the runtime ends the job when this process exits before MPI_Finalize.
    if (can_call_mpi_) MPI_Abort(comm_, kWatchdogExitCode);
    std::_Exit(kWatchdogExitCode);
  }

  double timeout_seconds_;
  MPI_Comm comm_;
  int rank_ = 0;
  bool can_call_mpi_ = false;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false, armed_ = false;
  const char* what_ = "";
  std::uint64_t step_ = 0;
  Clock::time_point deadline_{};
  std::thread thread_;  // last: starts after every member above
};

/// MPI collectives on host memory for DataParallel: a private duplicate of the parent communicator
/// with MPI_ERRORS_RETURN (failures become vgg::distributed::Error), every call watched by a Watchdog.
class MpiCommunicator {
 public:
  /// Gradient pieces this communicator can reduce: host memory.
  static constexpr bool host_memory = true;

  /// requires: MPI initialised (Environment); collective over `parent`.
  explicit MpiCommunicator(MPI_Comm parent = MPI_COMM_WORLD, double timeout_seconds = 300.0)
      : watchdog_(timeout_seconds, parent) {
    {
      auto guard = watchdog_.arm("MPI_Comm_dup at start-up", 0);
      check(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup", 0);
    }
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !detail::communication_failed.load()) MPI_Comm_free(&comm_);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }
  double timeout_seconds() const { return watchdog_.timeout_seconds(); }

  /// ensures: allreduce_sum takes pieces of up to `floats` floats in all without allocating.
  void reserve(std::size_t floats) { staging_.reserve(floats); }
  std::size_t capacity() const { return staging_.capacity(); }

  /// Replaces each piece by the sum over ranks of pre_scale * piece (pre_scale 0: this rank adds
  /// zeros, whatever its pieces hold). requires: the pieces total at most capacity() floats.
  void allreduce_sum(std::span<const std::span<float>> pieces, float pre_scale, const char* what,
                     std::uint64_t step) {
    std::size_t n = 0;
    for (std::span<float> p : pieces) n += p.size();
    if (n > staging_.capacity()) throw std::logic_error("vgg::distributed::MpiCommunicator: bucket over capacity");
    float* staging = staging_.data();
    n = 0;
    for (std::span<float> p : pieces) {
      if (pre_scale == 0.0f) {
        std::fill_n(staging + n, p.size(), 0.0f);
      } else if (pre_scale == 1.0f) {
        std::copy(p.begin(), p.end(), staging + n);
      } else {
        std::transform(p.begin(), p.end(), staging + n, [pre_scale](float g) { return pre_scale * g; });
      }
      n += p.size();
    }
    {
      auto guard = watchdog_.arm(what, step);
      check(MPI_Allreduce(MPI_IN_PLACE, staging, checked_count(n), MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce", step,
            what);
    }
    n = 0;
    for (std::span<float> p : pieces) {
      std::copy_n(staging + n, p.size(), p.begin());
      n += p.size();
    }
  }

  /// Collective: whether the ranks run on more than one host (MPI_COMM_TYPE_SHARED groups fewer
  /// ranks than the communicator has), where Overlap::automatic reduces during backward.
  bool spans_hosts() {
    auto guard = watchdog_.arm("host count at start-up", 0);
    MPI_Comm local = MPI_COMM_NULL;
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local), "MPI_Comm_split_type", 0);
    int here = 0;
    MPI_Comm_size(local, &here);
    MPI_Comm_free(&local);
    return here < size_;
  }

  /// Non-blocking reductions (DataParallel with overlap): bucket k gets sizes[k] floats of host
  /// staging of its own, so that every bucket may be in flight at once. Allocates; call once.
  void reserve_buckets(std::span<const std::size_t> sizes) {
    bucket_begin_.assign(sizes.size() + 1, 0);
    for (std::size_t k = 0; k < sizes.size(); ++k) bucket_begin_[k + 1] = bucket_begin_[k] + sizes[k];
    bucket_staging_.reserve(bucket_begin_.back());
    requests_.assign(sizes.size(), MPI_REQUEST_NULL);
  }
  /// Bucket k's staging, for the caller to fill before start_bucket(k) and read after wait_buckets().
  std::span<float> bucket(std::size_t k) {
    return {bucket_staging_.data() + bucket_begin_[k], bucket_begin_[k + 1] - bucket_begin_[k]};
  }
  /// Starts summing bucket(k) over ranks, in place (MPI_Iallreduce). Every rank starts the same
  /// buckets in the same order. requires: bucket k is not in flight.
  void start_bucket(std::size_t k, const char* what, std::uint64_t step) {
    if (requests_[k] != MPI_REQUEST_NULL)
      throw std::logic_error("vgg::distributed::MpiCommunicator: bucket " + std::to_string(k) + " is still in flight");
    const std::span<float> data = bucket(k);
    auto guard = watchdog_.arm(what, step);
    check(MPI_Iallreduce(MPI_IN_PLACE, data.data(), checked_count(data.size()), MPI_FLOAT, MPI_SUM, comm_,
                         &requests_[k]),
          "MPI_Iallreduce", step, what);
  }
  /// Lets the started reductions advance without waiting: Open MPI moves a non-blocking collective
  /// on only inside MPI calls (no progress thread here), so DataParallel calls this between layers.
  void progress(const char* what, std::uint64_t step) {
    int done = 0;
    check(MPI_Testall(int(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall", step,
          what);
  }
  /// Waits for every started bucket (watched: a dead peer aborts the job after the timeout).
  void wait_buckets(const char* what, std::uint64_t step) {
    auto guard = watchdog_.arm(what, step);
    check(MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall", step, what);
  }

  /// Sums `values` over ranks, in place.
  void allreduce_sum(std::span<double> values, const char* what, std::uint64_t step) {
    auto guard = watchdog_.arm(what, step);
    check(MPI_Allreduce(MPI_IN_PLACE, values.data(), checked_count(values.size()), MPI_DOUBLE, MPI_SUM, comm_),
          "MPI_Allreduce", step, what);
  }

  /// (minimum, maximum) of `value` over ranks.
  std::pair<std::uint64_t, std::uint64_t> min_max(std::uint64_t value, const char* what, std::uint64_t step) {
    std::uint64_t lo = value, hi = value;
    auto guard = watchdog_.arm(what, step);
    check(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, comm_), "MPI_Allreduce", step, what);
    check(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, comm_), "MPI_Allreduce", step, what);
    return {lo, hi};
  }

  /// Copies root's `data` to every rank (in chunks of at most capacity() floats, so counts stay ints).
  void broadcast(std::span<float> data, int root, const char* what, std::uint64_t step) {
    const std::size_t chunk = std::max<std::size_t>(staging_.capacity(), 1 << 20);
    for (std::size_t at = 0; at < data.size(); at += chunk) {
      const std::size_t n = std::min(chunk, data.size() - at);
      auto guard = watchdog_.arm(what, step);
      check(MPI_Bcast(data.data() + at, checked_count(n), MPI_FLOAT, root, comm_), "MPI_Bcast", step, what);
    }
  }
  void broadcast(std::span<std::int64_t> data, int root, const char* what, std::uint64_t step) {
    auto guard = watchdog_.arm(what, step);
    check(MPI_Bcast(data.data(), checked_count(data.size()), MPI_INT64_T, root, comm_), "MPI_Bcast", step, what);
  }

  /// Every rank's `text`, indexed by rank (start-up checks; allocates).
  std::vector<std::string> allgather(const std::string& text, const char* what) {
    auto guard = watchdog_.arm(what, 0);
    std::vector<int> lengths(std::size_t(size_), 0);
    const int mine = checked_count(text.size());
    check(MPI_Allgather(&mine, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_), "MPI_Allgather", 0, what);
    std::vector<int> offsets(std::size_t(size_), 0);
    long long total = 0;
    for (std::size_t r = 0; r < lengths.size(); ++r) {
      offsets[r] = checked_count(std::size_t(total));
      total += lengths[r];
    }
    std::string all(std::size_t(total), '\0');
    check(MPI_Allgatherv(text.data(), mine, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, comm_),
          "MPI_Allgatherv", 0, what);
    std::vector<std::string> out;
    for (std::size_t r = 0; r < lengths.size(); ++r)
      out.push_back(all.substr(std::size_t(offsets[r]), std::size_t(lengths[r])));
    return out;
  }

 private:
  static int checked_count(std::size_t n) {
    if (n > std::size_t(std::numeric_limits<int>::max()))
      throw std::length_error("vgg::distributed: " + std::to_string(n) + " elements exceed one MPI call's int count");
    return int(n);
  }

  void check(int rc, const char* call, std::uint64_t step, const char* what = "start-up") const {
    if (rc == MPI_SUCCESS) return;
    detail::communication_failed.store(true);
    throw Error("vgg::distributed: rank " + std::to_string(rank_) + ": " + call + " (" + what + ") failed in step " +
                std::to_string(step) + ": " + detail::mpi_error_text(rc) +
                "; another rank has probably died. The job stops; resume from the last checkpoint.");
  }

  Watchdog watchdog_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  Buffer<float> staging_;
  Buffer<float> bucket_staging_;           // the non-blocking buckets, end to end
  std::vector<std::size_t> bucket_begin_;  // bucket k is [bucket_begin_[k], bucket_begin_[k + 1])
  std::vector<MPI_Request> requests_;      // bucket k's reduction; MPI_REQUEST_NULL when done
};

/// A 64-bit fingerprint of bytes (SplitMix64 over 8-byte words): equal inputs give equal values on
/// every rank; a changed bit changes it (with probability 1 - 2^-64).
inline std::uint64_t fingerprint(std::span<const std::byte> bytes, std::uint64_t h = 0) {
  h = mix64(h ^ bytes.size());
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = mix64(h ^ word);
  }
  std::uint64_t tail = 0;
  if (i < bytes.size()) std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  return mix64(h ^ tail);
}
template <class T>
std::uint64_t fingerprint_of(std::span<const T> values, std::uint64_t h = 0) {
  return fingerprint(std::as_bytes(values), h);
}

/// Fingerprint of the running executable's file (Linux: /proc/self/exe), so that ranks built from
/// different sources are refused; 0 where the file cannot be read (the check then compares zeros).
/// Read once per process.
inline std::uint64_t executable_fingerprint() {
  static const std::uint64_t value = [] {
    std::ifstream in("/proc/self/exe", std::ios::binary);
    if (!in) return std::uint64_t{0};
    std::vector<char> block(std::size_t(1) << 20);
    std::uint64_t h = 0;
    while (in) {
      in.read(block.data(), std::streamsize(block.size()));
      const auto got = std::size_t(in.gcount());
      if (got == 0) break;
      h = fingerprint(std::as_bytes(std::span<const char>(block.data(), got)), h);
    }
    return h;
  }();
  return value;
}

/// What every rank must agree on before training starts, besides the network's architecture and
/// parameter count (DataParallel adds those).
struct Identity {
  std::map<std::string, std::string> settings;  ///< global batch size, optimizer, lr, seed, ...
  std::uint64_t data_fingerprint = 0;           ///< e.g. fingerprint_of(labels) of the training set
  std::uint64_t executable_fingerprint = distributed::executable_fingerprint();
};

/// Whether the gradient buckets are reduced during the backward pass (MPI_Iallreduce started from
/// the backward hook) or after it (MPI_Allreduce).
enum class Overlap {
  off,        ///< after the whole backward pass
  on,         ///< during it; needs a communicator with non-blocking buckets (MpiCommunicator, NcclCommunicator)
  automatic,  ///< on where the ranks span more than one host and the communicator can, else off
};

inline const char* to_string(Overlap o) {
  return o == Overlap::off ? "off" : o == Overlap::on ? "on" : "auto";
}

struct Options {
  std::size_t bucket_bytes = std::size_t(4) << 20;  ///< gradient floats per MPI_Allreduce, x 4 bytes
  double timeout_seconds = 300.0;  ///< one collective's longest wait before the job is aborted; 0: never
  /// automatic: on one host the reduction runs on the cores that compute backward, so there is
  /// nothing idle to overlap with (docs/PERFORMANCE.md measures it); across hosts the network
  /// transfer hides behind the convolutions' backward. With overlap, staging for every bucket
  /// (one gradient's worth) is allocated at construction.
  Overlap overlap = Overlap::automatic;
};

/// One global step's statistics, identical on every rank.
struct StepResult {
  double loss = 0;          ///< mean loss over the global batch
  long long correct = 0;    ///< correct predictions in the global batch
  long long samples = 0;    ///< samples in the global batch
  double wait_seconds = 0;           ///< this rank's wait for the slowest rank (the first, tiny allreduce)
  double communication_seconds = 0;  ///< this rank's time reducing the gradient buckets (with overlap:
                                     ///< the part after backward, which it did not hide)
};

/// Rank `rank`'s part [begin, end) of a global batch of `global` samples split over `ranks` ranks:
/// contiguous, sizes differ by at most one, the first (global % ranks) ranks one larger.
struct Shard {
  std::size_t begin = 0, end = 0;
  std::size_t size() const { return end - begin; }
};
inline Shard shard_range(std::size_t global, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw std::invalid_argument("vgg::distributed::shard_range: rank " + std::to_string(rank) + " of " +
                                std::to_string(ranks) + " ranks");
  const std::size_t r = std::size_t(rank), n = std::size_t(ranks);
  const std::size_t base = global / n, extra = global % n;
  const std::size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

/// The dropout seed of rank `rank` for the run seed `base`: rank 0 keeps `base` (its masks are a
/// plain run's), other ranks get an independent key.
constexpr std::uint64_t dropout_seed(std::uint64_t base, int rank) {
  return rank == 0 ? base : mix64(base ^ mix64(0xd15ea5e000000000ULL + std::uint64_t(rank)));
}

namespace detail {
template <class B>
std::vector<std::span<float>> optimizer_buffers(Adam<B>& adam) {
  return {adam.first_moment(), adam.second_moment()};
}
template <class B>
std::vector<std::span<float>> optimizer_buffers(Sgd<B>& sgd) {
  return {sgd.momentum_buffer()};
}
}  // namespace detail

/// Data-parallel training of `net` over the ranks of an MPI communicator. Use (every rank):
///   vgg::distributed::Environment mpi(argc, argv);
///   vgg::distributed::DataParallel dp(*net, {.settings = ..., .data_fingerprint = ...});
///   (resume: every rank, or only the root, loads the checkpoint; the first step broadcasts the root's)
///   auto shard = dp.shard(batch.size);   // this rank's samples of the global batch
///   auto r = dp.step(optimizer, images_of(shard), labels_of(shard));   // r: global loss, correct
///   if (dp.is_root()) { log(r); save_training_checkpoint(...); }
template <class Net, class Comm = MpiCommunicator>
class DataParallel {
  static_assert(Net::backend::host_memory == Comm::host_memory,
                "vgg::distributed::DataParallel: the communicator reduces another memory than the one this network's "
                "gradients live in; use MpiCommunicator for CPU networks, NcclCommunicator (<vgg/distributed/nccl.hpp>) "
                "for vgg::cuda networks.");

 public:
  /// Collective: checks that every rank runs the same architecture, parameter count, backend,
  /// settings, data and executable (Error naming the first disagreement otherwise) and allocates
  /// the gradient bucket. requires: net outlives this object.
  DataParallel(Net& net, const Identity& identity, Options options = {}, MPI_Comm parent = MPI_COMM_WORLD)
      : net_(net), comm_(make_communicator(net, parent, options.timeout_seconds)) {
    if (options.bucket_bytes < sizeof(float))
      throw std::invalid_argument("vgg::distributed::DataParallel: bucket_bytes must hold at least one float");
    overlap_ = resolve_overlap(options.overlap);
    check_agreement(identity);
    std::size_t tensors = 0;
    net_.for_each_parameter_data([&](std::span<float>, std::span<float>) { ++tensors; });
    grads_.resize(tensors);
    pieces_.reserve(tensors + 2);
    bucket_floats_ = std::min(options.bucket_bytes / sizeof(float), std::size_t(Net::num_params));
    comm_.reserve(bucket_floats_);
    if constexpr (kCanOverlap) {
      if (overlap_) plan_buckets();
    }
  }

  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  bool is_root() const { return comm_.rank() == 0; }
  Comm& communicator() { return comm_; }
  std::size_t bucket_floats() const { return bucket_floats_; }
  /// Whether gradients are reduced during backward (Options::overlap, resolved).
  bool overlapping() const { return overlap_; }
  /// Buckets reduced during backward (0 without overlap).
  std::size_t overlap_buckets() const { return buckets_.size(); }
  /// Whether overlap hands the communicator the gradient pieces themselves (NcclCommunicator) rather
  /// than host staging (MpiCommunicator).
  static constexpr bool overlaps_in_place() { return kCanOverlapInPlace; }
  /// Of those, how many the last step started from the backward hook, before backward returned.
  std::size_t buckets_started_in_backward() const { return started_in_backward_; }

  /// This rank's samples of a global batch of `global` samples.
  Shard shard(std::size_t global) const { return shard_range(global, rank(), size()); }

  /// Collective: every rank takes the root's weights, optimizer state and counters, and its own
  /// dropout seed (dropout_seed(root's seed, rank)). The first step() calls it; call it again after
  /// loading a checkpoint mid-run. Allocates the optimizer's state if it had none.
  template <class Optimizer>
  void synchronize(Optimizer& optimizer) {
    optimizer.reserve(Net::num_params, net_.context());
    const std::uint64_t step = net_.step();
    net_.for_each_parameter_data(
        [&](std::span<float> value, std::span<float>) { comm_.broadcast(value, 0, "weights broadcast", step); });
    for (std::span<float> state : detail::optimizer_buffers(optimizer))
      comm_.broadcast(state, 0, "optimizer state broadcast", step);
    // The root's seed is the run's base seed (dropout_seed(base, 0) == base).
    std::int64_t counters[3] = {optimizer.steps(), std::int64_t(net_.step()), std::int64_t(net_.seed())};
    comm_.broadcast(std::span<std::int64_t>(counters), 0, "counters broadcast", step);
    optimizer.set_steps(counters[0]);
    net_.set_step(std::uint64_t(counters[1]));
    net_.set_seed(dropout_seed(std::uint64_t(counters[2]), rank()));
    synchronized_ = true;
  }

  /// Collective: one training step on the global batch whose shard this rank holds (x: labels.size()
  /// samples of Net::input_shape; a shard may be empty once the first step is done). Forward and
  /// backward on the shard, gradients averaged over the global batch, one optimizer update. With
  /// overlap, the loss allreduce runs before backward and the buckets are reduced during it (with
  /// any backward hook of the caller's set aside for that backward, and put back).
  /// ensures: identical weights on every rank; no allocation by vgg after the first step (Open MPI
  ///          mallocs and frees a temporary buffer inside each allreduce); when the global loss is
  ///          not finite, no rank updates anything (as vgg::train_step).
  template <class Optimizer>
  StepResult step(Optimizer& optimizer, std::span<const float> x, std::span<const std::int32_t> labels) {
    if (!synchronized_) synchronize(optimizer);
    const std::uint64_t step = net_.step();
    const std::size_t n = labels.size();
    LossResult local{};
    // A local failure (bad labels, a shape) is shared through the first collective, so that every
    // rank stops at once instead of the others waiting for this one until the timeout.
    std::exception_ptr failure;
    try {
      if (n > 0) {
        net_.set_mode(Mode::train);
        net_.forward(x, int(n));
        local = net_.loss(labels, /*gradient=*/true);  // also allocates the gradients on the first step
        if (!overlap_) net_.backward();  // with overlap, after the loss allreduce (it gives pre_scale)
      } else {
        net_.set_step(step + 1);  // the ranks' dropout counters advance together
      }
    } catch (...) {
      failure = std::current_exception();
    }
    std::size_t i = 0;
    bool has_gradient = true;
    net_.for_each_parameter_data([&](std::span<float> value, std::span<float> grad) {
      has_gradient = has_gradient && grad.size() == value.size();
      grads_[i++] = grad;
    });
    if (!has_gradient && !failure)
      failure = std::make_exception_ptr(std::logic_error(
          "vgg::distributed::DataParallel::step: rank " + std::to_string(rank()) +
          " got no samples before its first backward pass; use a global batch of at least " + std::to_string(size()) +
          " samples"));
    using Clock = std::chrono::steady_clock;
    const auto wait_start = Clock::now();
    double totals[4] = {double(n), local.loss * double(n), double(local.correct), failure ? 1.0 : 0.0};
    comm_.allreduce_sum(std::span<double>(totals), "loss allreduce", step);
    if (failure) std::rethrow_exception(failure);
    if (totals[3] > 0)
      throw Error("vgg::distributed: rank " + std::to_string(rank()) + ": " + std::to_string(int(totals[3])) +
                  " other rank(s) failed in step " + std::to_string(step) + " (see their messages); stopping");
    const auto communication_start = Clock::now();
    if (totals[0] < 1.0) throw std::invalid_argument("vgg::distributed::DataParallel::step: the global batch is empty");
    // As vgg::train_step: a non-finite loss leaves the weights as they were, for the caller to stop
    // and diagnose. The global loss is the same on every rank, so all ranks skip together.
    if (!std::isfinite(totals[1]))
      return {totals[1] / totals[0], (long long)(totals[2]), (long long)(totals[0]),
              std::chrono::duration<double>(communication_start - wait_start).count(), 0.0};
    // Weight rank r's mean gradient by n_r / N: the sum over ranks is the global batch's mean gradient.
    const float pre_scale = float(double(n) / totals[0]);
    double communication = 0;
    if constexpr (kCanOverlap) {
      if (overlap_) communication = reduce_during_backward(pre_scale, n > 0, step);
    }
    if (!overlap_) {
      reduce_gradients(pre_scale, step);
      communication = std::chrono::duration<double>(Clock::now() - communication_start).count();
    }
    optimizer.step(net_);
    return {totals[1] / totals[0], (long long)(totals[2]), (long long)(totals[0]),
            std::chrono::duration<double>(communication_start - wait_start).count(), communication};
  }

  /// Fingerprint of this rank's parameter values (bits; the same for equal values on any backend).
  /// A device network's are copied to the host first (allocates).
  std::uint64_t parameters_fingerprint() {
    std::uint64_t h = 0;
    if constexpr (Net::backend::host_memory) {
      net_.for_each_parameter_data(
          [&](std::span<float> value, std::span<float>) { h = fingerprint_of(std::span<const float>(value), h); });
    } else {
      std::vector<float> host(static_cast<std::size_t>(Net::num_params));
      net_.copy_parameters_to_host(host);
      std::size_t at = 0;
      net_.for_each_parameter_data([&](std::span<float> value, std::span<float>) {
        h = fingerprint_of(std::span<const float>(host).subspan(at, value.size()), h);
        at += value.size();
      });
    }
    return h;
  }
  /// Collective: true when every rank's parameters are bit-identical.
  bool in_sync() {
    const auto [lo, hi] = comm_.min_max(parameters_fingerprint(), "parameters check", net_.step());
    return lo == hi;
  }

 private:
  // A device communicator takes the network's context (its stream); MpiCommunicator does not.
  static Comm make_communicator(Net& net, MPI_Comm parent, double timeout_seconds) {
    if constexpr (std::is_constructible_v<Comm, typename Net::backend::Context&, MPI_Comm, double>) {
      return Comm(net.context(), parent, timeout_seconds);
    } else {
      return Comm(parent, timeout_seconds);
    }
  }

  // Two flavours of non-blocking buckets. Staged (MpiCommunicator): DataParallel copies a bucket's
  // gradients into the communicator's host staging, starts it, and copies the sums back. In place
  // (NcclCommunicator): the communicator is handed the bucket's pieces of the gradient tensors
  // themselves, in the backend's memory, with the pre-scale; nothing is copied. In place wins where
  // a communicator offers both.
  static constexpr bool kCanOverlapInPlace =
      requires(Comm& c, std::size_t k, std::span<const std::size_t> sizes, std::span<const std::span<float>> pieces,
               std::uint64_t s) {
        c.spans_hosts();
        c.reserve_buckets(sizes);
        c.start_bucket_in_place(k, pieces, 1.0f, "", s);
        c.progress("", s);
        c.wait_buckets("", s);
      };
  static constexpr bool kCanOverlapStaged = !kCanOverlapInPlace && requires(Comm& c, std::size_t k, std::uint64_t s) {
    c.spans_hosts();
    c.bucket(k);
    c.start_bucket(k, "", s);
    c.progress("", s);
    c.wait_buckets("", s);
  };
  static constexpr bool kCanOverlap = kCanOverlapInPlace || kCanOverlapStaged;

  bool resolve_overlap(Overlap requested) {
    if constexpr (kCanOverlap) {
      // Collective on every rank whatever its option, so that ranks given different options reach
      // the agreement check (which compares the result) instead of mismatched collectives.
      const bool multi_host = comm_.spans_hosts();
      return requested == Overlap::on || (requested == Overlap::automatic && multi_host);
    } else {
      if (requested == Overlap::on)
        throw std::invalid_argument("vgg::distributed::DataParallel: Overlap::on needs a communicator with "
                                    "non-blocking buckets (MpiCommunicator, NcclCommunicator); this one reduces "
                                    "after backward");
      return false;
    }
  }

  // One slice of a parameter tensor's gradient in a bucket.
  struct Piece {
    std::size_t tensor = 0, offset = 0, size = 0;
  };
  struct Bucket {
    std::size_t first_piece = 0, end_piece = 0, floats = 0;
    std::size_t lowest_tensor = 0;  // complete once backward has finished this tensor
  };

  // Buckets of up to bucket_floats_ gradient floats in backward order: the last tensor first. A
  // bucket ends where the next tensor does not fit, and only a tensor larger than a bucket is split
  // (its pieces fill buckets of their own): a bucket then never waits for a layer that its own
  // tensors do not need (with 4 MiB buckets, the first classifier layer's weight would otherwise
  // share one with the convolutions and wait for their whole backward). The last bucket carries
  // one more float: 1 from a rank whose backward failed, so that all ranks learn it from the
  // reduction itself and none updates.
  void plan_buckets() {
    std::vector<std::size_t> sizes;
    net_.for_each_parameter_data([&](std::span<float> value, std::span<float>) { sizes.push_back(value.size()); });
    Bucket open;
    auto close = [&] {
      if (open.floats == 0) return;
      open.end_piece = pieces_plan_.size();
      open.lowest_tensor = pieces_plan_.back().tensor;
      buckets_.push_back(open);
      open = Bucket{pieces_plan_.size(), pieces_plan_.size(), 0, 0};
    };
    for (std::size_t t = sizes.size(); t-- > 0;) {
      if (open.floats + sizes[t] > bucket_floats_) close();
      for (std::size_t at = 0; at < sizes[t];) {
        const std::size_t take = std::min(sizes[t] - at, bucket_floats_ - open.floats);
        pieces_plan_.push_back({t, at, take});
        open.floats += take;
        at += take;
        if (open.floats == bucket_floats_ || (at == sizes[t] && sizes[t] > bucket_floats_)) close();
      }
    }
    close();
    std::vector<std::size_t> sizes_of_buckets(buckets_.size());
    if constexpr (kCanOverlapInPlace) {
      // In place: the failure flag travels in a host allreduce after the wait instead.
      for (std::size_t k = 0; k < buckets_.size(); ++k) sizes_of_buckets[k] = buckets_[k].floats;
      bucket_spans_.resize(pieces_plan_.size());
    } else {
      for (std::size_t k = 0; k < buckets_.size(); ++k)
        sizes_of_buckets[k] = buckets_[k].floats + (k + 1 == buckets_.size());
    }
    comm_.reserve_buckets(sizes_of_buckets);
  }

  // Bucket k's gradients x scale (zeros for scale 0, whatever the gradients hold) into its staging,
  // and its reduction started; in place, the communicator is handed the pieces and the scale.
  void start_bucket(std::size_t k, float scale, bool failed, std::uint64_t step) {
    const Bucket& b = buckets_[k];
    if constexpr (kCanOverlapInPlace) {
      // step() gets here only when every rank's loss went through, which allocated every gradient.
      for (std::size_t i = b.first_piece; i < b.end_piece; ++i) {
        const Piece& p = pieces_plan_[i];
        bucket_spans_[i] = grads_[p.tensor].subspan(p.offset, p.size);
      }
      comm_.start_bucket_in_place(
          k, std::span<const std::span<float>>(bucket_spans_.data() + b.first_piece, b.end_piece - b.first_piece),
          scale, "gradient allreduce (overlapped)", step);
    } else {
      float* out = comm_.bucket(k).data();
      for (std::size_t i = b.first_piece; i < b.end_piece; ++i) {
        const Piece& p = pieces_plan_[i];
        const std::span<float> g = grads_[p.tensor];
        if (scale == 0.0f || g.size() < p.offset + p.size) {
          std::fill_n(out, p.size, 0.0f);
        } else if (scale == 1.0f) {
          std::copy_n(g.data() + p.offset, p.size, out);
        } else {
          std::transform(g.data() + p.offset, g.data() + p.offset + p.size, out,
                         [scale](float v) { return scale * v; });
        }
        out += p.size;
      }
      if (k + 1 == buckets_.size()) *out = failed ? 1.0f : 0.0f;
      comm_.start_bucket(k, "gradient allreduce (overlapped)", step);
    }
  }

  static void on_backward(void* self, const FinishedGradients& finished) {
    static_cast<DataParallel*>(self)->gradients_finished(finished.first_tensor);
  }
  // From the backward hook: tensors >= first_tensor are final; start every bucket they complete,
  // then let the buckets in flight advance.
  void gradients_finished(std::size_t first_tensor) {
    while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].lowest_tensor >= first_tensor)
      start_bucket(next_bucket_++, pre_scale_, false, step_now_);
    comm_.progress("gradient allreduce (overlapped)", step_now_);
  }

  // Puts the caller's hook (if any) back when backward ends, returns or throws: the network never
  // keeps a pointer to this object past the step.
  struct HookScope {
    Net& net;
    BackwardHook previous;
    HookScope(Net& n, BackwardHook h) : net(n), previous(n.backward_hook()) { net.set_backward_hook(h); }
    HookScope(const HookScope&) = delete;
    HookScope& operator=(const HookScope&) = delete;
    ~HookScope() { net.set_backward_hook(previous); }
  };

  // The same on every flavour: `count` other ranks' backward passes failed, so no rank updates.
  [[noreturn]] void throw_others_failed(int count, std::uint64_t step) const {
    throw Error("vgg::distributed: rank " + std::to_string(rank()) + ": " + std::to_string(count) +
                " other rank(s) failed in the backward pass of step " + std::to_string(step) +
                " (see their messages); stopping");
  }

  // Backward with the buckets reduced as they complete; returns the seconds spent after backward
  // (starting what was left, waiting, copying back). Every rank starts every bucket in the same
  // order: a rank without samples, or whose backward threw, contributes zeros to those it had not
  // started, and its failure flag stops every rank before the update.
  double reduce_during_backward(float pre_scale, bool run_backward, std::uint64_t step) {
    pre_scale_ = pre_scale;
    step_now_ = step;
    next_bucket_ = 0;
    std::exception_ptr failure;
    if (run_backward) {
      HookScope scope(net_, BackwardHook{&DataParallel::on_backward, this});
      try {
        net_.backward();
      } catch (const Error&) {
        throw;  // a failed collective: communication_failed is set and the job ends
      } catch (...) {
        failure = std::current_exception();
      }
    }
    started_in_backward_ = next_bucket_;
    const auto start = std::chrono::steady_clock::now();
    while (next_bucket_ < buckets_.size()) start_bucket(next_bucket_++, failure ? 0.0f : pre_scale, bool(failure), step);
    comm_.wait_buckets("gradient allreduce (overlapped)", step);
    if constexpr (kCanOverlapInPlace) {
      // The gradients are already summed in place; the failure flag gets a small host allreduce of
      // its own (it cannot ride in a device bucket without a copy).
      double failed_ranks[1] = {failure ? 1.0 : 0.0};
      comm_.allreduce_sum(std::span<double>(failed_ranks), "backward failure check", step);
      if (failure) std::rethrow_exception(failure);
      if (failed_ranks[0] > 0) throw_others_failed(int(failed_ranks[0]), step);
    } else {
      if (failure) std::rethrow_exception(failure);
      const std::span<float> last = comm_.bucket(buckets_.size() - 1);
      if (last.back() > 0.0f) throw_others_failed(int(last.back()), step);
      for (std::size_t k = 0; k < buckets_.size(); ++k) {
        const float* in = comm_.bucket(k).data();
        for (std::size_t i = buckets_[k].first_piece; i < buckets_[k].end_piece; ++i) {
          const Piece& p = pieces_plan_[i];
          std::copy_n(in, p.size, grads_[p.tensor].data() + p.offset);
          in += p.size;
        }
      }
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  void reduce_gradients(float pre_scale, std::uint64_t step) {
    pieces_.clear();
    std::size_t filled = 0;
    auto flush = [&] {
      comm_.allreduce_sum(std::span<const std::span<float>>(pieces_), pre_scale, "gradient allreduce", step);
      pieces_.clear();
      filled = 0;
    };
    for (std::span<float> g : grads_) {
      for (std::size_t at = 0; at < g.size();) {
        const std::size_t take = std::min(g.size() - at, bucket_floats_ - filled);
        pieces_.push_back(g.subspan(at, take));
        filled += take;
        at += take;
        if (filled == bucket_floats_) flush();
      }
    }
    if (filled > 0) flush();
  }

  void check_agreement(const Identity& identity) {
    std::vector<std::pair<std::string, std::string>> fields = {
        {"architecture", Net::architecture()},
        {"parameter count", std::to_string(Net::num_params)},
        {"backend", Net::backend::name()},
        {"data fingerprint", std::to_string(identity.data_fingerprint)},
        {"gradient overlap", overlap_ ? "on" : "off"},
        {"executable fingerprint", std::to_string(identity.executable_fingerprint)}};
    for (const auto& [key, value] : identity.settings) fields.emplace_back("setting '" + key + "'", value);
    std::string mine;
    for (const auto& [key, value] : fields) mine += key + '\x1f' + value + '\x1e';
    const std::vector<std::string> all = comm_.allgather(mine, "start-up agreement check");
    for (std::size_t r = 1; r < all.size(); ++r) {
      if (all[r] == all[0]) continue;
      const auto theirs = split_fields(all[r]), root = split_fields(all[0]);
      std::string what = "the list of settings", here, there;
      // A plain pair, not a structured binding: clang before 16 cannot capture those in the lambda.
      for (const auto& field : root) {
        const auto it = std::find_if(theirs.begin(), theirs.end(), [&](const auto& f) { return f.first == field.first; });
        if (it == theirs.end() || it->second != field.second) {
          what = field.first;
          here = field.second;
          there = it == theirs.end() ? "(none)" : it->second;
          break;
        }
      }
      throw Error("vgg::distributed: rank " + std::to_string(r) + " disagrees with rank 0 on the " + what +
                  ": rank 0 has '" + here + "', rank " + std::to_string(r) + " has '" + there +
                  "'. Every rank must run the same executable on the same data with the same settings.");
    }
  }
  static std::vector<std::pair<std::string, std::string>> split_fields(const std::string& text) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t at = 0;
    while (at < text.size()) {
      const std::size_t unit = text.find('\x1f', at), record = text.find('\x1e', at);
      if (unit == std::string::npos || record == std::string::npos) break;
      out.emplace_back(text.substr(at, unit - at), text.substr(unit + 1, record - unit - 1));
      at = record + 1;
    }
    return out;
  }

  Net& net_;
  Comm comm_;
  std::vector<std::span<float>> grads_;   // this step's gradient of every parameter tensor
  std::vector<std::span<float>> pieces_;  // the current bucket's slices of grads_
  std::size_t bucket_floats_ = 0;
  bool synchronized_ = false;
  bool overlap_ = false;
  // With overlap: the buckets in backward order, their pieces, and this step's progress through them.
  std::vector<Bucket> buckets_;
  std::vector<Piece> pieces_plan_;
  std::vector<std::span<float>> bucket_spans_;  // in place: this step's gradient slice of each piece
  std::size_t next_bucket_ = 0, started_in_backward_ = 0;
  float pre_scale_ = 0;
  std::uint64_t step_now_ = 0;
};

}  // namespace vgg::distributed
