// dp_train: a small data-parallel trainer on synthetic data, launched with mpirun. The fault tests
// kill or stop one rank mid-run with it and resume from its checkpoint; docs/PERFORMANCE.md times
// 1 vs 2 ranks with it (--net w8: the recipe's width / 8 VGG-11 at 224 x 224).
//
//   mpirun -np 2 dp_train --net tiny --steps 20 --checkpoint run.safetensors --every 2
//   mpirun -np 2 dp_train ... --die-rank 1 --die-step 6 --die-signal KILL     # a rank dies
//   mpirun -np 1 dp_train ... --resume                                        # fewer ranks
//   mpirun -np 2 dp_train ... --overlap on --die-rank 1 --die-step 3 --die-signal STOP --die-in backward
#include <omp.h>
#include <unistd.h>

#include <vgg/distributed.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace dist = vgg::distributed;

namespace {

struct Options {
  std::string net = "tiny";
  long steps = 10;
  std::size_t batch = 8;  // global
  float lr = 1e-2f;
  std::uint64_t seed = 1;
  fs::path checkpoint;
  long every = 0;
  bool resume = false;
  int die_rank = -1;
  long die_step = -1;
  std::string die_signal = "KILL";
  double timeout = 300;
  double bucket_mb = 4;
  int threads = 0;
  std::string overlap = "auto";  // gradient reduction during backward: on, off, auto
  std::string die_in = "step";   // before the step, or past its first collective (backward)
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
T number(const std::string& flag, const std::string& text) {
  std::istringstream in(text);
  T v{};
  if (!(in >> v) || !in.eof()) throw UsageError(flag + " expects a number, found '" + text + "'");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--net") o.net = value();
    else if (flag == "--steps") o.steps = number<long>(flag, value());
    else if (flag == "--batch") o.batch = number<std::size_t>(flag, value());
    else if (flag == "--lr") o.lr = number<float>(flag, value());
    else if (flag == "--seed") o.seed = number<std::uint64_t>(flag, value());
    else if (flag == "--checkpoint") o.checkpoint = value();
    else if (flag == "--every") o.every = number<long>(flag, value());
    else if (flag == "--resume") o.resume = true;
    else if (flag == "--die-rank") o.die_rank = number<int>(flag, value());
    else if (flag == "--die-step") o.die_step = number<long>(flag, value());
    else if (flag == "--die-signal") o.die_signal = value();
    else if (flag == "--timeout") o.timeout = number<double>(flag, value());
    else if (flag == "--bucket-mb") o.bucket_mb = number<double>(flag, value());
    else if (flag == "--threads") o.threads = number<int>(flag, value());
    else if (flag == "--overlap") o.overlap = value();
    else if (flag == "--die-in") o.die_in = value();
    else throw UsageError("unknown option '" + flag + "'");
  }
  if (o.net != "tiny" && o.net != "w8") throw UsageError("--net must be tiny or w8, found '" + o.net + "'");
  if (o.batch < 1) throw UsageError("--batch must be at least 1");
  if (o.die_signal != "KILL" && o.die_signal != "STOP") throw UsageError("--die-signal must be KILL or STOP");
  if (o.resume && o.checkpoint.empty()) throw UsageError("--resume needs --checkpoint");
  if (o.overlap != "on" && o.overlap != "off" && o.overlap != "auto")
    throw UsageError("--overlap must be on, off or auto, found '" + o.overlap + "'");
  if (o.die_in != "step" && o.die_in != "backward")
    throw UsageError("--die-in must be step or backward, found '" + o.die_in + "'");
  return o;
}

/// Global batch number `step`: the same bits on every rank, whatever the rank count.
template <class Net>
void make_batch(std::uint64_t step, std::size_t global, std::vector<float>& x, std::vector<std::int32_t>& labels) {
  x.resize(global * Net::input_shape.size());
  labels.resize(global);
  vgg::Rng rng(1000003 * (step + 1));
  for (float& v : x) v = vgg::unit_float(rng.next()) * 2.0f - 1.0f;
  for (auto& l : labels) l = std::int32_t(rng.below(std::uint64_t(Net::num_classes)));
}

template <class Net>
int train(const Options& o) {
  auto net = std::make_unique<Net>(o.seed);
  if (o.threads > 0) net->set_threads(o.threads);
  vgg::Adam adam({.lr = o.lr});
  long first = 0;
  if (o.resume) {
    // Every rank reads the file (the first step would broadcast the root's state anyway).
    const auto state = vgg::io::load_training_checkpoint(o.checkpoint, *net, adam);
    first = adam.steps();
    if (dist::Environment::world_rank() == 0)
      std::cout << "resumed from step " << first << " on " << dist::Environment::world_size() << " ranks"
                << std::endl;
    (void)state;
  }
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  make_batch<Net>(0, o.batch, x, labels);
  const dist::Identity identity{
      .settings = {{"net", o.net}, {"batch", std::to_string(o.batch)}, {"lr", std::to_string(o.lr)},
                   {"seed", std::to_string(o.seed)}},
      .data_fingerprint = dist::fingerprint_of(std::span<const float>(x))};
  dist::DataParallel dp(*net, identity,
                        {.bucket_bytes = std::size_t(o.bucket_mb * 1048576.0),
                         .timeout_seconds = o.timeout,
                         .overlap = o.overlap == "on"    ? dist::Overlap::on
                                    : o.overlap == "off" ? dist::Overlap::off
                                                         : dist::Overlap::automatic});
  double compute = 0, wait = 0, communication = 0;
  long timed = 0;
  for (long step = first; step < o.steps; ++step) {
    if (dp.rank() == o.die_rank && step == o.die_step) {
      if (o.die_in == "backward") {
        // Take part in the step's first collective as DataParallel::step does (the loss allreduce:
        // samples, loss sum, correct, failures), so that the other ranks go on into backward and
        // wait on the gradient buckets instead.
        double totals[4] = {double(dp.shard(o.batch).size()), 0.0, 0.0, 0.0};
        dp.communicator().allreduce_sum(std::span<double>(totals), "loss allreduce", net->step());
      }
      std::cerr << "dp_train: rank " << dp.rank() << " raises SIG" << o.die_signal << " before step " << step
                << std::endl;
      std::raise(o.die_signal == "KILL" ? SIGKILL : SIGSTOP);
    }
    make_batch<Net>(std::uint64_t(step), o.batch, x, labels);
    const dist::Shard mine = dp.shard(o.batch);
    const std::size_t per = Net::input_shape.size();
    const auto start = std::chrono::steady_clock::now();
    const dist::StepResult r =
        dp.step(adam, std::span<const float>(x).subspan(mine.begin * per, mine.size() * per),
                std::span<const std::int32_t>(labels).subspan(mine.begin, mine.size()));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step - first >= 2) {  // the first steps allocate
      compute += seconds - r.wait_seconds - r.communication_seconds;
      wait += r.wait_seconds;
      communication += r.communication_seconds;
      ++timed;
    }
    if (dp.is_root()) {
      std::printf("step %ld loss %.6f\n", step + 1, r.loss);
      std::fflush(stdout);
      if (!o.checkpoint.empty() && o.every > 0 && (step + 1) % o.every == 0)
        vgg::io::save_training_checkpoint(o.checkpoint, *net, adam,
                                          {.epoch = 0, .network_step = std::int64_t(net->step()), .metadata = {}});
    }
  }
  const bool same = dp.in_sync();
  if (dp.is_root()) {
    std::printf("gradient overlap %s (%zu buckets)\n", dp.overlapping() ? "on" : "off", dp.overlap_buckets());
    std::printf("done: %ld steps on %d ranks, weights %s, fingerprint %016llx\n", o.steps, dp.size(),
                same ? "identical on every rank" : "DIFFER between ranks",
                static_cast<unsigned long long>(dp.parameters_fingerprint()));
    if (timed > 0)
      std::printf("timing: %ld steps of global batch %zu, %.4f s/step (compute %.4f s, waiting for the slowest "
                  "rank %.4f s, gradient allreduce %.4f s), %.1f images/s, %d threads per rank\n",
                  timed, o.batch, (compute + wait + communication) / double(timed), compute / double(timed),
                  wait / double(timed), communication / double(timed),
                  double(o.batch) * double(timed) / (compute + wait + communication), net->threads());
  }
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  dist::Environment mpi(argc, argv);
  try {
    const Options o = parse(argc, argv);
    if (o.threads > 0) omp_set_num_threads(o.threads);
    if (o.net == "w8") return train<vgg::vgg11<vgg::Input<1, 224, 224>, 10, 8>>(o);
    return train<vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>,
                          vgg::Classifier<32, 10, 0.5>>>(o);
  } catch (const UsageError& e) {
    std::cerr << "dp_train: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dp_train: " << e.what() << '\n';
    // An error on one rank only (a checkpoint it cannot write) would leave the others waiting.
    if (dist::Environment::world_size() > 1) dist::Environment::abort(1);
    return 1;
  }
}
