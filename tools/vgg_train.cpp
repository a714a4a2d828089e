// vgg-train: trains the D2L chapter's VGG-11 on Fashion-MNIST (or evaluates a checkpoint); --model
// tv-vgg11 ... tv-vgg16_bn trains a torchvision-layout VGG instead (fine-tuning pretrained weights).
//
//   vgg-train                                   # the chapter's recipe: width / 8, 224x224, batch 64, Adam 1e-3, 5 epochs
//   vgg-train --resize 64 --epochs 1            # a quick variant
//   vgg-train --resume                          # continue from the checkpoint given by --save
//   vgg-train --evaluate runs/vgg11_w8_224.safetensors
//   vgg-train --init-from base.safetensors --freeze-features --save tuned.safetensors   # fine-tuning
//   vgg-train --model tv-vgg16 --init-from vgg16.safetensors --freeze-features   # torchvision's weights
//   mpirun -np 2 vgg-train --distributed --threads 1   # data-parallel over 2 processes (MPI builds)
//   mpirun -np 4 vgg-train --distributed --device cuda # over 4 GPUs, one per rank (builds with NCCL)
//
// The flags are parsed in cli_options.hpp (unit-tested and fuzzed on their own).
#include <fcntl.h>
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vgg/data/batcher.hpp>
#include <vgg/data/idx.hpp>
#include <vgg/health.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/io/fine_tune.hpp>
#include <vgg/cpu/product_rates.hpp>
#include <vgg/vgg.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "cli_options.hpp"

// --distributed: CMake defines VGG_TRAIN_MPI where vgg::distributed (MPI) exists, for the CPU unit,
// whose ranks reduce host memory (MpiCommunicator). The CUDA unit (vgg_train_cuda.cu) trains
// data-parallel only where CMake also found NCCL (VGG_TRAIN_HAVE_NCCL, vgg::distributed_cuda): its
// gradients live on the GPU and are reduced there (NcclCommunicator).
#if defined(VGG_TRAIN_MPI) && !defined(VGG_TRAIN_CUDA_UNIT)
#define VGG_TRAIN_DISTRIBUTED 1
#include <vgg/distributed.hpp>
namespace vgg_train {
using RankCommunicator = vgg::distributed::MpiCommunicator;
}
#elif defined(VGG_TRAIN_HAVE_NCCL) && defined(VGG_TRAIN_CUDA_UNIT)
#define VGG_TRAIN_DISTRIBUTED 1
#include <vgg/distributed.hpp>
#include <vgg/distributed/nccl.hpp>
namespace vgg_train {
using RankCommunicator = vgg::distributed::NcclCommunicator;
}
#else
#define VGG_TRAIN_DISTRIBUTED 0
#endif

namespace fs = std::filesystem;
using vgg_train::Options;
using vgg_train::UsageError;

namespace {

std::string format_duration(double seconds) {
  const long s = long(seconds + 0.5);
  std::ostringstream os;
  if (s >= 3600) os << s / 3600 << 'h';
  if (s >= 60) os << (s % 3600) / 60 << 'm';
  os << s % 60 << 's';
  return os.str();
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// Progress on stderr: a live line on a terminal, a line a minute otherwise (logs stay readable).
class Progress {
 public:
  Progress(int epoch, std::size_t batches) : epoch_(epoch), batches_(batches), tty_(isatty(2) != 0) {}
  void update(std::size_t done, std::size_t images, double loss_sum) {
    const double elapsed = since(start_);
    if (!tty_ && since(last_) < 60.0 && done != batches_) return;
    last_ = Clock::now();
    const double rate = double(images) / std::max(elapsed, 1e-9);
    const double eta = elapsed / double(done) * double(batches_ - done);
    std::fprintf(stderr, "%sepoch %d: %zu/%zu batches, %.1f images/s, loss %.4f, ETA %s%s", tty_ ? "\r\033[K" : "",
                 epoch_, done, batches_, rate, loss_sum / double(std::max<std::size_t>(images, 1)),
                 format_duration(eta).c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void finish() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  int epoch_;
  std::size_t batches_;
  bool tty_;
  Clock::time_point start_ = Clock::now(), last_ = Clock::now();
};

/// This process's place in the run: a plain run is rank 0 of 1; a --distributed one is one of the
/// ranks of mpirun, each evaluating and training on its part of every batch.
struct Place {
  int rank = 0, ranks = 1;
  bool root() const { return rank == 0; }
};

Place this_place([[maybe_unused]] const Options& o) {
#if VGG_TRAIN_DISTRIBUTED
  if (o.distributed) return {vgg::distributed::Environment::world_rank(), vgg::distributed::Environment::world_size()};
#endif
  return {};
}

/// One training step's results over the global batch (all ranks' parts).
struct GlobalStep {
  double loss = 0;  ///< mean over the global batch
  std::size_t correct = 0, samples = 0;
};

/// `sum_over_ranks(values)` replaces values by their sums over the ranks (nothing in a plain run).
template <class Net, class SumOverRanks>
vgg::LossResult evaluate(Net& net, vgg::data::Batcher& batches, std::size_t& count, SumOverRanks&& sum_over_ranks) {
  double totals[3] = {0, 0, 0};  // loss sum, correct, samples
  batches.start_epoch(0);
  // Each batch is staged as soon as the batcher delivers it, so a device uploads it while the
  // loss of the batch before is still being read back (on the CPU, staging is a view).
  auto stage_next = [&]() -> std::optional<vgg::StagedBatch> {
    while (auto b = batches.next())
      if (b->size > 0) return net.stage(std::span<const float>(b->images), b->labels);  // a rank's part may be empty
    return std::nullopt;
  };
  for (auto next = stage_next(); next;) {
    const vgg::StagedBatch current = *next;
    const auto r = vgg::evaluate_batch(net, current);
    totals[0] += r.loss * double(current.size);
    totals[1] += double(r.correct);
    totals[2] += double(current.size);
    next = stage_next();
  }
  sum_over_ranks(std::span<double>(totals));
  count = std::size_t(totals[2]);
  return {totals[0] / std::max(totals[2], 1.0), int(totals[1])};
}
template <class Net>
vgg::LossResult evaluate(Net& net, vgg::data::Batcher& batches, std::size_t& count) {
  return evaluate(net, batches, count, [](std::span<double>) {});
}

void append_line(const fs::path& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << '\n';
  out.flush();
  if (!out)
    throw std::runtime_error("cannot append to the metrics log '" + path.string() + "': " + std::strerror(errno));
}

std::string os_error() { return std::strerror(errno); }

/// Fails now, not after the first epoch, when `path` cannot be written as the run will write it:
/// a temporary file is created in its directory (as each save does) and removed again. An
/// existing target must be a regular file (saving replaces it; appending to a FIFO blocks).
void require_writable(const fs::path& path, const char* flag) {
  const std::string quoted = "'" + path.string() + "'";
  struct stat status {};
  if (::lstat(path.c_str(), &status) == 0 && !S_ISREG(status.st_mode)) {
    const char* kind = S_ISDIR(status.st_mode)   ? "a directory"
                       : S_ISLNK(status.st_mode) ? "a symbolic link"
                                                 : "a device, FIFO or socket";
    throw std::runtime_error(std::string(flag) + " " + quoted + " is not a regular file (" + kind +
                             "); vgg-train only writes regular files there");
  }
  const fs::path directory = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code error;
  fs::create_directories(directory, error);
  if (error)
    throw std::runtime_error(std::string(flag) + " " + quoted + ": cannot create the directory '" +
                             directory.string() + "': " + error.message());
  std::string probe = (directory / ("." + path.filename().string() + ".probe-XXXXXX")).string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0)
    throw std::runtime_error(std::string(flag) + " " + quoted + " cannot be written: creating a file in '" +
                             directory.string() + "' failed: " + os_error());
  ::close(fd);
  ::unlink(probe.c_str());
  if (S_ISREG(status.st_mode) && ::access(path.c_str(), W_OK) != 0 && errno != ENOENT)
    throw std::runtime_error(std::string(flag) + " " + quoted + " cannot be written: " + os_error());
}

/// Data sets are directories; a file there is a usage mistake that deserves its own message.
void require_data_directory(const fs::path& data) {
  std::error_code error;
  const auto status = fs::status(data, error);
  if (fs::exists(status) && !fs::is_directory(status))
    throw std::runtime_error("--data '" + data.string() +
                             "' is a file, not a directory: give the directory that holds the IDX files "
                             "(train-images-idx3-ubyte, ...; see docs/DATA.md)");
}

/// --precision on the network's context, and the line every run starts with: the processor, the
/// kernel path and the precision that actually run (a bf16 request on a CPU without AVX512-BF16,
/// or on a backend without a bf16 path, runs fp32 and says why), so a log tells what it measured.
template <class Net>
std::string apply_precision(const Options& o, Net& net) {
  using B = typename Net::backend;
  const vgg::Precision asked = o.precision == "bf16" ? vgg::Precision::bf16 : vgg::Precision::fp32;
  std::string line;
  vgg::Precision used = vgg::Precision::fp32;
  std::string note;
  if constexpr (requires(typename Net::Context& c) { c.set_precision(asked); c.precision_in_use(); }) {
    net.context().set_precision(asked);
    used = net.context().precision_in_use();
    note = net.context().precision_note();
  } else if (asked == vgg::Precision::bf16) {
    note = std::string("the ") + B::name() + " backend has no bf16 path yet; running fp32";
  }
  if constexpr (B::device == vgg::Device::cpu) line = "cpu: " + vgg::cpu::describe() + "; ";
  line += std::string("kernels: ") + B::name() + "; precision: " + vgg::to_string(used);
  if (used == vgg::Precision::bf16)
    line += " (bf16 operands by " + vgg::cpu::amx::bf16_kernel_description() + ", fp32 sums and weights)";
  if (!note.empty()) line += " (--precision bf16: " + note + ")";
  return line;
}

template <class Net>
vgg::Precision precision_used(Net& net) {
  if constexpr (requires(typename Net::Context& c) { c.precision_in_use(); }) return net.context().precision_in_use();
  return vgg::Precision::fp32;
}

/// Where bf16 mode runs on the vdpbf16ps kernel (no AMX tiles), a second line when that kernel
/// multiplies slower than the fp32 one on this core (measured now, a few ms); "" otherwise.
template <class Net>
std::string bf16_cost_note([[maybe_unused]] Net& net) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  if constexpr (Net::backend::device == vgg::Device::cpu) {
    if (precision_used(net) == vgg::Precision::bf16 && !vgg::cpu::amx::amx_ready()) {
      const std::string note = vgg::cpu::bf16_slower_note(vgg::cpu::measure_product_rates());
      if (!note.empty()) return "note: " + note;
    }
  }
#endif
  return "";
}

/// Buffers are sized for the batch, so a batch larger than the data set is capped to it.
std::size_t effective_batch(const Options& o, std::size_t samples, const char* what, bool report = true) {
  const std::size_t batch = std::min<std::size_t>(std::size_t(o.batch_size), samples);
  if (report && batch < std::size_t(o.batch_size))
    std::cerr << "vgg-train: note: --batch-size " << o.batch_size << " exceeds the " << samples << " " << what
              << "; batches of " << batch << " are used" << std::endl;
  return batch;
}

/// The batcher's input for Net: the chapter's net takes the grey image as it is; a torchvision-layout
/// net takes 3 channels normalised with ImageNet's mean and std, which its pretrained weights expect.
template <class Net>
vgg::data::BatcherOptions input_options(vgg::data::BatcherOptions options) {
  options.channels = Net::input_shape.c;
  if constexpr (Net::torchvision_layout) {
    static_assert(Net::input_shape.c == 3, "vgg-train: a torchvision-layout net takes 3 input channels (RGB).");
    options.normalize = true;
    options.mean = vgg::data::kImageNetMean;
    options.std_dev = vgg::data::kImageNetStd;
  }
  return options;
}

/// --resume with another --model is a usage mistake; said before the weights are read (which would
/// fail on the first tensor). Checkpoints written before --model existed hold the chapter's net.
void require_same_model(const Options& o) {
  const auto metadata = vgg::io::load_safetensors(o.save).metadata();
  const auto it = metadata.find("model");
  const std::string stored = it == metadata.end() ? "chapter" : it->second;
  if (stored != o.model)
    throw UsageError("--resume: the checkpoint '" + o.save.string() + "' was trained with model = " + stored +
                     ", but this run has model = " + o.model + "; use the same --model");
}

#if VGG_TRAIN_DISTRIBUTED
template <class Net>
using Parallel = vgg::distributed::DataParallel<Net, vgg_train::RankCommunicator>;

/// Collective: the data-parallel group of every rank, refused (vgg::distributed::Error) unless all
/// ranks run this executable with the same settings on the same data. On the GPU, DataParallel
/// reduces each bucket in place on the device (its NCCL flavour of --overlap).
template <class Net>
std::unique_ptr<Parallel<Net>> join_ranks(const Options& o, Net& net,
                                                               const vgg::data::Dataset& train_set,
                                                               const vgg::data::Dataset& test_set) {
  namespace dist = vgg::distributed;
  std::uint64_t data = 0;
  for (const vgg::data::Dataset* set : {&train_set, &test_set}) {
    data = dist::fingerprint_of(std::span<const std::uint8_t>(set->images.pixels), data);
    data = dist::fingerprint_of(std::span<const std::uint8_t>(set->labels), data);
  }
  auto settings = vgg_train::run_settings(o);
  // Beyond what a checkpoint must share: ranks that disagree on these would leave the loop at
  // different epochs, or one would resume while another starts afresh.
  settings["epochs"] = std::to_string(o.epochs);
  settings["resume"] = o.resume ? "yes" : "no";
  const dist::Overlap overlap = o.overlap == "on"    ? dist::Overlap::on
                                : o.overlap == "off" ? dist::Overlap::off
                                                     : dist::Overlap::automatic;
  return std::make_unique<Parallel<Net>>(
      net, dist::Identity{.settings = settings, .data_fingerprint = data},
      dist::Options{.timeout_seconds = double(o.collective_timeout), .overlap = overlap});
}
#endif

template <class Net, class Optimizer>
int train(const Options& o, Optimizer optimizer) {
  const Place place = this_place(o);
  const bool root = place.root();
  // Only rank 0 reads and writes the checkpoint and the log: on other hosts their paths need not exist.
  if (root) {
    if (o.resume && !fs::exists(fs::symlink_status(o.save)))
      throw std::runtime_error("--resume: no checkpoint at '" + o.save.string() + "' (set --save to its path)");
    if (!o.resume && fs::exists(fs::symlink_status(o.save)) && !o.overwrite)
      throw UsageError("--save '" + o.save.string() +
                       "' already exists; add --resume to continue that run, or --overwrite to replace it with this one");
    // Fail now, not after the first epoch, if the checkpoint or the log cannot be written there.
    require_writable(o.save, "--save");
    vgg::io::require_replaceable(o.save);  // and its temporary file
    require_writable(o.log, "--log");
  }
  require_data_directory(o.data);
  const auto train_set = vgg::data::load_dataset(o.data, vgg::data::Split::train);
  const auto test_set = vgg::data::load_dataset(o.data, vgg::data::Split::test);
  auto net = std::make_unique<Net>(o.seed);
  if (o.threads > 0) net->set_threads(o.threads);
  const std::string kernels = apply_precision(o, *net);
  if (root) std::cout << kernels << std::endl;
  if (root)  // the probe's few ms only where its line is printed
    if (const std::string cost = bf16_cost_note(*net); !cost.empty()) std::cout << cost << std::endl;

  const std::size_t samples = o.limit == 0 ? train_set.size() : std::min(o.limit, train_set.size());
  const std::size_t train_batch = effective_batch(o, samples, "training images", root);
  const std::size_t test_batch = std::min<std::size_t>(std::size_t(o.batch_size), test_set.size());
  const auto steps_per_epoch = std::int64_t((samples + train_batch - 1) / train_batch);

#if VGG_TRAIN_DISTRIBUTED
  std::unique_ptr<Parallel<Net>> parallel;
  if (o.distributed) parallel = join_ranks(o, *net, train_set, test_set);
#endif
  std::int64_t first_epoch = 0;
  if (o.resume && root) {
    require_same_model(o);
    const auto state = vgg::io::load_training_checkpoint(o.save, *net, optimizer);
    for (const auto& [key, value] : vgg_train::run_settings(o)) {
      const auto it = state.metadata.find(key);
      if (it != state.metadata.end() && !vgg_train::same_setting(key, it->second, value))
        throw UsageError("--resume: the checkpoint was trained with " + key + " = " + it->second + ", but this run has " +
                         key + " = " + value + "; use the same settings");
    }
    // Every epoch of a run with these settings takes the same number of steps: counters that
    // disagree mean a damaged or foreign file, and resuming from it would not repeat the run.
    const std::int64_t expected_steps = state.epoch * steps_per_epoch;
    if (optimizer.steps() != expected_steps || std::int64_t(net->step()) != expected_steps)
      throw vgg::io::CheckpointError("checkpoint '" + o.save.string() + "' is at epoch " + std::to_string(state.epoch) +
                                     ", which takes " + std::to_string(expected_steps) +
                                     " steps with these settings, but its optimizer step is " +
                                     std::to_string(optimizer.steps()) + " and its network step " +
                                     std::to_string(net->step()) + "; the file is damaged or from another run");
    first_epoch = state.epoch;
  }
  if (!o.init_from.empty() && root) {
    // A fresh run from other weights (a --distributed run hands them to every rank below).
    const auto tuned = vgg::io::load_for_fine_tuning(o.init_from, *net, {.seed = o.seed});
    std::cout << "fine-tuning from '" << o.init_from.string() << "'" << std::endl;
    if (tuned.last_layer_reinitialised)
      std::cout << "fine-tuning: the last layer " << tuned.last_layer << " has " << tuned.checkpoint_classes
                << " classes in '" << o.init_from.string() << "', this run " << Net::num_classes
                << ": re-initialised it (seed " << o.seed << ")" << std::endl;
  }
  if (o.freeze_features) net->freeze_features();
  // Training step and evaluation: this process alone, or its part of the ranks' global batch.
  auto sum_over_ranks = [&](std::span<double> values) {
#if VGG_TRAIN_DISTRIBUTED
    if (parallel) parallel->communicator().allreduce_sum(values, "test evaluation allreduce", net->step());
#endif
    (void)values;
  };
  auto step = [&](std::span<const float> images, std::span<const std::int32_t> labels) -> GlobalStep {
#if VGG_TRAIN_DISTRIBUTED
    if (parallel) {
      const auto r = parallel->step(optimizer, images, labels);
      return {r.loss, std::size_t(r.correct), std::size_t(r.samples)};
    }
#endif
    const vgg::LossResult r = vgg::train_step(*net, optimizer, images, labels);
    return {r.loss, std::size_t(r.correct), labels.size()};
  };
#if VGG_TRAIN_DISTRIBUTED
  if (parallel) {
    // Every rank takes rank 0's weights, optimizer state and counters (from the checkpoint when
    // resuming), so the epoch to continue from follows from the step counter.
    parallel->synchronize(optimizer);
    first_epoch = std::int64_t(net->step()) / steps_per_epoch;
  }
#endif
  if (o.resume) {
    if (root) std::cout << "resuming from '" << o.save.string() << "' after epoch " << first_epoch << std::endl;
    if (first_epoch >= o.epochs) {
      if (root) std::cout << "nothing to do: " << first_epoch << " of " << o.epochs << " epochs are done" << std::endl;
      return 0;
    }
  }

  // Each rank prepares only its own part of every global batch.
  const auto part = std::size_t(place.rank), parts = std::size_t(place.ranks);
  vgg::data::Batcher train_batches(train_set,
                                   input_options<Net>({.batch_size = train_batch, .output_size = o.resize, .seed = o.seed,
                                                       .shuffle = true, .limit = o.limit, .part = part, .parts = parts}));
  vgg::data::Batcher test_batches(test_set, input_options<Net>({.batch_size = test_batch, .output_size = o.resize,
                                                                .seed = 0, .shuffle = false, .part = part,
                                                                .parts = parts}));
  if (root) {
    std::cout << "training " << Net::architecture() << " (" << Net::num_params << " parameters) on "
              << train_batches.samples_per_epoch() << " images, batch " << train_batch << ", " << o.optimizer << " lr "
              << o.lr << ", " << net->threads() << " threads, seed " << o.seed;
    if (o.freeze_features) std::cout << ", features frozen";
    if (o.distributed)
      std::cout << ", " << place.ranks << (place.ranks == 1 ? " rank" : " ranks") << " (data-parallel, batch split over them)";
#if VGG_TRAIN_DISTRIBUTED
    if (parallel) std::cout << ", gradient overlap " << (parallel->overlapping() ? "on" : "off");
#endif
    std::cout << std::endl;
  }

  vgg::HealthMonitor health;
  std::optional<int> last_saved;
  try {
    for (int epoch = int(first_epoch); epoch < o.epochs; ++epoch) {
      const auto start = Clock::now();
      Progress progress(epoch + 1, train_batches.batches_per_epoch());
      train_batches.start_epoch(std::uint64_t(epoch));
      double loss_sum = 0;
      std::size_t seen = 0, correct = 0, done = 0;
      // Batch k+1 is staged right after step k is queued: on a GPU its pinned copy and upload run
      // while step k's backward pass and update compute (staging.hpp); on the CPU it is a view.
      // A data-parallel step takes its part of the batch from the host, unstaged.
      const bool stage_batches = !o.distributed;
      auto b = train_batches.next();
      std::optional<vgg::StagedBatch> next;
      if (b && stage_batches) next = net->stage(std::span<const float>(b->images), b->labels);
      while (b) {
        const std::span<const float> images(b->images);
        GlobalStep r;
        if (next) {
          const auto local = vgg::train_step(*net, optimizer, *next);
          r = {local.loss, std::size_t(local.correct), std::size_t(next->size)};
          next.reset();
        } else {
          r = step(images, b->labels);
        }
        // The loss is the global batch's and the weights are the same on every rank, so every rank
        // reaches the same verdict (the inputs, resized IDX bytes, are always finite).
        health.after_step(*net, r.loss, images, epoch + 1);
        loss_sum += r.loss * double(r.samples);
        correct += r.correct;
        seen += r.samples;
        ++done;
        if (root) progress.update(done, seen, loss_sum);
        // The batcher reuses the buffer of the batch before the one it delivers: this one is done.
        if ((b = train_batches.next()) && stage_batches) next = net->stage(std::span<const float>(b->images), b->labels);
      }
      if (root) progress.finish();
      health.before_save(*net, epoch + 1);
      const double train_seconds = since(start);
      std::size_t test_count = 0;
      const auto test = evaluate(*net, test_batches, test_count, sum_over_ranks);
      const double seconds = since(start);
      const double train_loss = loss_sum / double(seen), train_acc = double(correct) / double(seen);
      const double test_acc = double(test.correct) / double(test_count);

      char line[256];
      std::snprintf(line, sizeof line, "epoch %d, loss %.4f, train acc %.3f, test acc %.3f, time %.1f sec", epoch + 1,
                    train_loss, train_acc, test_acc, seconds);
      if (!root) {  // the other ranks hold the same weights and results; rank 0 reports and saves
        last_saved = epoch + 1;
        continue;
      }
      std::cout << line << std::endl;

      vgg::io::save_training_checkpoint(
          o.save, *net, optimizer,
          {.epoch = epoch + 1, .network_step = std::int64_t(net->step()), .metadata = vgg_train::run_settings(o)});
      last_saved = epoch + 1;
      char json[512];
      std::snprintf(json, sizeof json,
                    "{\"epoch\": %d, \"train_loss\": %.6f, \"train_acc\": %.6f, \"test_loss\": %.6f, \"test_acc\": %.6f, "
                    "\"train_seconds\": %.2f, \"seconds\": %.2f, \"images_per_second\": %.2f, \"threads\": %d, \"ranks\": %d, \"seed\": %llu, \"precision\": \"%s\"}",
                    epoch + 1, train_loss, train_acc, test.loss, test_acc, train_seconds, seconds,
                    double(seen) / train_seconds, net->threads(), place.ranks, (unsigned long long)o.seed,
                    vgg::to_string(precision_used(*net)));
      append_line(o.log, json);
    }
  } catch (const vgg::NumericalError& e) {
    std::string kept = last_saved || first_epoch > 0
                           ? "the checkpoint '" + o.save.string() + "' still holds epoch " +
                                 std::to_string(last_saved ? *last_saved : first_epoch)
                           : "no checkpoint was written";
    throw std::runtime_error(std::string(e.what()) + "\n" + kept);
  }
  if (root) std::cout << "checkpoint: " << o.save.string() << std::endl;
  return 0;
}

template <class Net>
int evaluate_checkpoint(const Options& o) {
  require_data_directory(o.data);
  const auto test_set = vgg::data::load_dataset(o.data, vgg::data::Split::test);
  auto net = std::make_unique<Net>(o.seed);
  if (o.threads > 0) net->set_threads(o.threads);
  std::cout << apply_precision(o, *net) << std::endl;
  vgg::io::load_weights(o.evaluate, *net);
  vgg::data::Batcher batches(test_set, input_options<Net>({.batch_size = effective_batch(o, test_set.size(), "test images"),
                                                           .output_size = o.resize, .shuffle = false}));
  std::size_t count = 0;
  const auto r = evaluate(*net, batches, count);
  if (!std::isfinite(r.loss))
    throw std::runtime_error("the test loss of '" + o.evaluate.string() + "' is " + vgg::describe_value(float(r.loss)) +
                             " although its weights are finite: the forward pass overflowed");
  std::printf("test loss %.4f, test acc %.4f (%zu images)\n", r.loss, double(r.correct) / double(count), count);
  return 0;
}

template <class Net, class B>
int run_net(const Options& o) {
  if (!o.evaluate.empty()) return evaluate_checkpoint<Net>(o);
  if (o.optimizer == "sgd") return train<Net>(o, vgg::Sgd<B>({.lr = o.lr, .momentum = 0.9f}));
  return train<Net>(o, vgg::Adam<B>({.lr = o.lr}));
}

template <int S, int D, class B>
int run(const Options& o) {
  return run_net<typename vgg::vgg11<vgg::Input<1, S, S>, 10, D>::template on<B>, B>(o);
}

/// --model tv-*: torchvision's layout with 10 classes, at the (--resize, --width-divisor) pairs of
/// vgg_train::kTorchvisionSizes only (parse_args refuses the others): every pair is a full training
/// loop to compile.
template <template <int, int, class> class Model, class B>
int run_torchvision(const Options& o) {
  if (o.resize == 224 && o.width_divisor == 1)
    return run_net<typename Model<10, 1, vgg::Input<3, 224, 224>>::template on<B>, B>(o);
  if (o.resize == 32 && o.width_divisor == 32) {
    // A test configuration: the device unit leaves it out, since every net is a full training loop
    // to compile there too.
    if constexpr (B::host_memory) return run_net<typename Model<10, 32, vgg::Input<3, 32, 32>>::template on<B>, B>(o);
    throw UsageError("--model " + o.model + " at --resize 32 --width-divisor 32 (a test configuration) is built "
                     "for the CPU only, not for the " + B::name() + " backend: use --device cpu, or --resize 224 "
                     "--width-divisor 1");
  }
  throw UsageError("--model " + o.model + " is not instantiated at --resize " + std::to_string(o.resize) +
                   " --width-divisor " + std::to_string(o.width_divisor) + "; choose " +
                   vgg_train::kTorchvisionSizesText);
}

template <int S, class B>
int dispatch_width(const Options& o) {
  switch (o.width_divisor) {
    case 1: return run<S, 1, B>(o);
    case 2: return run<S, 2, B>(o);
    case 4: return run<S, 4, B>(o);
    default: return run<S, 8, B>(o);
  }
}

template <class B>
int dispatch(const Options& o) {
  namespace tv = vgg::torchvision;
  if (o.model == "tv-vgg11") return run_torchvision<tv::vgg11, B>(o);
  if (o.model == "tv-vgg11_bn") return run_torchvision<tv::vgg11_bn, B>(o);
  if (o.model == "tv-vgg16") return run_torchvision<tv::vgg16, B>(o);
  if (o.model == "tv-vgg16_bn") return run_torchvision<tv::vgg16_bn, B>(o);
  switch (o.resize) {
    case 224: return dispatch_width<224, B>(o);
    case 96: return dispatch_width<96, B>(o);
    case 64: return dispatch_width<64, B>(o);
    default: return dispatch_width<32, B>(o);
  }
}

/// The run on backend B; errors become messages (each line starting with `who`) and exit codes.
template <class B>
int run_on(const Options& options, const std::string& who = "vgg-train: ") {
  try {
    return dispatch<B>(options);
  } catch (const UsageError& e) {
    std::cerr << who << e.what() << '\n';
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << who << "out of memory; try a smaller --batch-size, --resize, --width-divisor or --threads\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << who << e.what() << '\n';
    return 1;
  }
}

}  // namespace

#if defined(VGG_TRAIN_CUDA_UNIT)
// This file compiled again by nvcc (vgg_train_cuda.cu): the runs on the CUDA backend.
std::string vgg_train_cuda_problem() { return vgg::cuda::device_problem(); }
int vgg_train_cuda_main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  return run_on<vgg::cuda::Backend>(vgg_train::parse_args(args));
}
#if VGG_TRAIN_DISTRIBUTED
/// Collective over MPI_COMM_WORLD (MPI initialised): makes this rank's GPU (by local rank) the
/// current device, before any network exists. Empty when every rank has a GPU of its own, else why
/// not: this rank's reason, or that another rank has none (every rank then falls back, or fails, alike).
std::string vgg_train_cuda_use_local_gpu() {
  std::string problem;
  try {
    vgg::distributed::use_local_gpu();
  } catch (const std::exception& e) {
    problem = e.what();
  }
  int any = problem.empty() ? 0 : 1;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any != 0 && problem.empty()) problem = "another rank has no GPU of its own";
  return problem;
}
/// One rank of --distributed on its GPU: DataParallel<Net, NcclCommunicator>.
int vgg_train_cuda_distributed(int argc, char** argv, const std::string& who) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  return run_on<vgg::cuda::Backend>(vgg_train::parse_args(args), who);
}
#endif
#else
#if defined(VGG_TRAIN_HAVE_CUDA)
std::string vgg_train_cuda_problem();  // empty when a CUDA device is usable, else why not
int vgg_train_cuda_main(int argc, char** argv);
#endif
#if defined(VGG_TRAIN_HAVE_NCCL)
std::string vgg_train_cuda_use_local_gpu();  // collective; empty when every rank has its GPU
int vgg_train_cuda_distributed(int argc, char** argv, const std::string& who);
#endif

namespace {
/// --distributed: this process is one rank of an mpirun job. MPI is initialised here alone, so a
/// plain run of an MPI build never touches it (nor needs mpirun). --device cuda (or auto with a GPU
/// on every rank) trains on the GPUs over NCCL, where vgg-train was built with it.
int run_distributed(const Options& options, [[maybe_unused]] int& argc, [[maybe_unused]] char**& argv) {
#if VGG_TRAIN_DISTRIBUTED
  namespace dist = vgg::distributed;
  std::optional<dist::Environment> mpi;
  try {
    mpi.emplace(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "vgg-train: --distributed: " << e.what() << '\n';
    return 1;
  }
  const int rank = dist::Environment::world_rank();
  const std::string who = rank == 0 ? "vgg-train: " : "vgg-train: rank " + std::to_string(rank) + ": ";
  bool on_gpu = false;
  if (options.device != "cpu") {
#if defined(VGG_TRAIN_HAVE_NCCL)
    // Every rank takes part (the choice is collective), and all reach the same verdict.
    const std::string problem = vgg_train_cuda_use_local_gpu();
    on_gpu = problem.empty();
#else
    const std::string problem =
        "this vgg-train was built without NCCL, which data-parallel training on GPUs needs (configure with "
        "-DVGG_CUDA=ON where the CUDA toolkit, cuDNN and NCCL 2.14 or newer are installed; -DVGG_NCCL=ON makes "
        "NCCL required)";
#endif
    if (!on_gpu && options.device == "cuda") {
      // Each rank says why (the reasons may differ); none has started a collective of training.
      std::cerr << who << "--distributed --device cuda: " << problem << '\n';
      return 1;
    }
    if (!on_gpu && rank == 0) std::cout << "--device auto: " << problem << "; --distributed runs on the CPU" << std::endl;
  }
  int status = 0;
#if defined(VGG_TRAIN_HAVE_NCCL)
  if (on_gpu) status = vgg_train_cuda_distributed(argc, argv, who);
#endif
  if (!on_gpu) status = run_on<vgg::cpu::Backend>(options, who);
  // The other ranks would wait for this one in their next collective: end the whole job now.
  if (status != 0) dist::Environment::abort(status);
  return 0;
#else
  (void)options;
  std::cerr << "vgg-train: --distributed: this vgg-train was built without MPI (install libopenmpi-dev and "
               "openmpi-bin, as scripts/setup.sh does, and configure again; -DVGG_MPI=ON makes MPI required)\n";
  return 1;
#endif
}
}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    const std::vector<std::string_view> args(argv + 1, argv + argc);
    options = vgg_train::parse_args(args);
  } catch (const UsageError& e) {
    std::cerr << "vgg-train: " << e.what() << '\n';
    return 2;
  }
  if (options.help) {
    std::cout << vgg_train::kHelp;
    return 0;
  }
  if (options.threads > 0) omp_set_num_threads(options.threads);
  if (options.distributed) return run_distributed(options, argc, argv);
  if (options.device != "cpu") {
#if defined(VGG_TRAIN_HAVE_CUDA)
    const std::string problem = vgg_train_cuda_problem();
    if (problem.empty()) return vgg_train_cuda_main(argc, argv);
#else
    const std::string problem = "this vgg-train was built without the CUDA backend (configure with -DVGG_CUDA=ON "
                                "where the CUDA toolkit and cuDNN are installed)";
#endif
    if (options.device == "cuda") {
      std::cerr << "vgg-train: --device cuda: " << problem << '\n';
      return 1;
    }
    std::cout << "--device auto: " << problem << "; running on the CPU" << std::endl;
  }
  return run_on<vgg::cpu::Backend>(options);
}
#endif
