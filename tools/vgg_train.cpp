// vgg-train: trains the D2L chapter's VGG-11 on Fashion-MNIST (or evaluates a checkpoint).
//
//   vgg-train                                   # the chapter's recipe: width / 8, 224x224, batch 64, Adam 1e-3, 5 epochs
//   vgg-train --resize 64 --epochs 1            # a quick variant
//   vgg-train --resume                          # continue from the checkpoint given by --save
//   vgg-train --evaluate runs/vgg11_w8_224.safetensors
//
// Flags are parsed by hand: about sixty lines give exact control over the messages and the exit
// code 2 for usage errors, and spare users another dependency.
#include <omp.h>
#include <unistd.h>

#include <vgg/data/batcher.hpp>
#include <vgg/data/idx.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

constexpr int kResizes[] = {224, 96, 64, 32};
constexpr int kWidthDivisors[] = {1, 2, 4, 8};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  fs::path data = "data/fashion-mnist";
  int epochs = 5;
  int batch_size = 64;
  float lr = 1e-3f;
  std::string optimizer = "adam";
  int resize = 224;
  int width_divisor = 8;
  int threads = 0;  // 0: OpenMP's default
  std::uint64_t seed = 1;
  fs::path save;  // default derived from resize and width
  bool resume = false;
  std::size_t limit = 0;
  fs::path evaluate;  // evaluation mode when set
  fs::path log;       // default: <save>.metrics.jsonl
  std::string device = "cpu";  // cpu | cuda | auto
};

const char* kHelp = R"(Usage: vgg-train [options]

Trains the D2L chapter's VGG-11 (every width divided by --width-divisor) on Fashion-MNIST resized to
--resize x --resize, or evaluates a saved checkpoint on the test set.

Options:
  --data DIR             IDX files (default data/fashion-mnist; fetch with scripts/fetch_data.sh)
  --epochs N             epochs to train in total (default 5)
  --batch-size N         mini-batch size (default 64)
  --lr X                 learning rate (default 1e-3)
  --optimizer NAME       adam | sgd (SGD uses momentum 0.9) (default adam)
  --resize S             input size: 224, 96, 64 or 32 (default 224)
  --width-divisor D      1, 2, 4 or 8 (default 8, the chapter's small net)
  --threads N            compute threads (default: all cores)
  --device NAME          cpu | cuda | auto (auto: the GPU when one is usable, else the CPU) (default cpu)
  --seed N               seed for initialisation, shuffling and dropout (default 1)
  --save PATH            checkpoint written atomically after every epoch
                         (default runs/vgg11_w<D>_<S>.safetensors)
  --resume               continue from the checkpoint at --save
  --limit N              train on the first N training images only (smoke runs)
  --log PATH             JSON-lines metrics log (default <save>.metrics.jsonl)
  --evaluate PATH        load the weights at PATH and report test accuracy; no training
  --help                 this text

Exit status: 0 success, 1 runtime error (data, checkpoint), 2 usage error.
)";

template <class T>
T parse_number(const std::string& flag, const std::string& text) {
  std::istringstream in(text);
  T value{};
  if (!(in >> value) || !in.eof())
    throw UsageError(flag + " expects a number, found '" + text + "'");
  return value;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kHelp;
      std::exit(0);
    } else if (flag == "--data") o.data = value();
    else if (flag == "--epochs") o.epochs = parse_number<int>(flag, value());
    else if (flag == "--batch-size") o.batch_size = parse_number<int>(flag, value());
    else if (flag == "--lr") o.lr = parse_number<float>(flag, value());
    else if (flag == "--optimizer") o.optimizer = value();
    else if (flag == "--resize") o.resize = parse_number<int>(flag, value());
    else if (flag == "--width-divisor") o.width_divisor = parse_number<int>(flag, value());
    else if (flag == "--threads") o.threads = parse_number<int>(flag, value());
    else if (flag == "--seed") o.seed = parse_number<std::uint64_t>(flag, value());
    else if (flag == "--save") o.save = value();
    else if (flag == "--resume") o.resume = true;
    else if (flag == "--limit") o.limit = parse_number<std::size_t>(flag, value());
    else if (flag == "--log") o.log = value();
    else if (flag == "--evaluate") o.evaluate = value();
    else if (flag == "--device") o.device = value();
    else throw UsageError("unknown option '" + flag + "' (see --help)");
  }
  if (o.epochs < 1) throw UsageError("--epochs must be at least 1, found " + std::to_string(o.epochs));
  if (o.batch_size < 1) throw UsageError("--batch-size must be at least 1, found " + std::to_string(o.batch_size));
  if (!(o.lr > 0.0f) || !std::isfinite(o.lr)) throw UsageError("--lr must be a positive number, found " + std::to_string(o.lr));
  if (o.optimizer != "adam" && o.optimizer != "sgd")
    throw UsageError("--optimizer must be adam or sgd, found '" + o.optimizer + "'");
  if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
    throw UsageError("--device must be cpu, cuda or auto, found '" + o.device + "'");
  if (o.threads < 0) throw UsageError("--threads must be positive, found " + std::to_string(o.threads));
  if (std::find(std::begin(kResizes), std::end(kResizes), o.resize) == std::end(kResizes))
    throw UsageError("--resize " + std::to_string(o.resize) + " is not instantiated; choose 224, 96, 64 or 32");
  if (std::find(std::begin(kWidthDivisors), std::end(kWidthDivisors), o.width_divisor) == std::end(kWidthDivisors))
    throw UsageError("--width-divisor " + std::to_string(o.width_divisor) + " is not instantiated; choose 1, 2, 4 or 8");
  if (o.save.empty())
    o.save = fs::path("runs") / ("vgg11_w" + std::to_string(o.width_divisor) + "_" + std::to_string(o.resize) + ".safetensors");
  if (o.log.empty()) o.log = fs::path(o.save.string() + ".metrics.jsonl");
  return o;
}

/// The settings a resumed run must share with the run that wrote the checkpoint.
std::map<std::string, std::string> run_settings(const Options& o) {
  return {{"seed", std::to_string(o.seed)},           {"batch_size", std::to_string(o.batch_size)},
          {"lr", std::to_string(o.lr)},               {"optimizer", o.optimizer},
          {"resize", std::to_string(o.resize)},       {"width_divisor", std::to_string(o.width_divisor)},
          {"limit", std::to_string(o.limit)}};
}

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

template <class Net>
vgg::LossResult evaluate(Net& net, vgg::data::Batcher& batches, std::size_t& count) {
  vgg::LossResult total;
  count = 0;
  batches.start_epoch(0);
  while (auto b = batches.next()) {
    const auto r = vgg::evaluate_batch(net, std::span<const float>(b->images), b->labels);
    total.loss += r.loss * double(b->size);
    total.correct += r.correct;
    count += b->size;
  }
  total.loss /= double(std::max<std::size_t>(count, 1));
  return total;
}

void append_line(const fs::path& path, const std::string& line) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::app);
  out << line << '\n';
  if (!out) throw std::runtime_error("cannot append to the metrics log '" + path.string() + "'");
}

template <class Net, class Optimizer>
int train(const Options& o, Optimizer optimizer) {
  const auto train_set = vgg::data::load_dataset(o.data, vgg::data::Split::train);
  const auto test_set = vgg::data::load_dataset(o.data, vgg::data::Split::test);
  auto net = std::make_unique<Net>(o.seed);
  if (o.threads > 0) net->set_threads(o.threads);

  int first_epoch = 0;
  if (o.resume) {
    if (!fs::exists(o.save))
      throw std::runtime_error("--resume: no checkpoint at '" + o.save.string() + "' (set --save to its path)");
    const auto state = vgg::io::load_training_checkpoint(o.save, *net, optimizer);
    for (const auto& [key, value] : run_settings(o)) {
      const auto it = state.metadata.find(key);
      if (it != state.metadata.end() && it->second != value)
        throw UsageError("--resume: the checkpoint was trained with " + key + " = " + it->second + ", but this run has " +
                         key + " = " + value + "; use the same settings");
    }
    first_epoch = int(state.epoch);
    std::cout << "resuming from '" << o.save.string() << "' after epoch " << first_epoch << std::endl;
    if (first_epoch >= o.epochs) {
      std::cout << "nothing to do: " << first_epoch << " of " << o.epochs << " epochs are done" << std::endl;
      return 0;
    }
  }

  // Fail now, not after the first epoch, if the checkpoint cannot be written there.
  if (o.save.has_parent_path()) fs::create_directories(o.save.parent_path());
  vgg::data::Batcher train_batches(train_set, {.batch_size = std::size_t(o.batch_size), .output_size = o.resize,
                                               .seed = o.seed, .shuffle = true, .limit = o.limit});
  vgg::data::Batcher test_batches(test_set, {.batch_size = std::size_t(o.batch_size), .output_size = o.resize,
                                             .seed = 0, .shuffle = false});
  std::cout << "training " << Net::architecture() << " (" << Net::num_params << " parameters) on "
            << train_batches.samples_per_epoch() << " images, batch " << o.batch_size << ", " << o.optimizer << " lr "
            << o.lr << ", " << net->threads() << " threads, seed " << o.seed << std::endl;

  for (int epoch = first_epoch; epoch < o.epochs; ++epoch) {
    const auto start = Clock::now();
    Progress progress(epoch + 1, train_batches.batches_per_epoch());
    train_batches.start_epoch(std::uint64_t(epoch));
    double loss_sum = 0;
    std::size_t seen = 0, correct = 0, done = 0;
    while (auto b = train_batches.next()) {
      const auto r = vgg::train_step(*net, optimizer, std::span<const float>(b->images), b->labels);
      if (!std::isfinite(r.loss)) throw std::runtime_error("the training loss became " + std::to_string(r.loss) + " in epoch " + std::to_string(epoch + 1) + "; lower --lr");
      loss_sum += r.loss * double(b->size);
      correct += std::size_t(r.correct);
      seen += b->size;
      progress.update(++done, seen, loss_sum);
    }
    progress.finish();
    const double train_seconds = since(start);
    std::size_t test_count = 0;
    const auto test = evaluate(*net, test_batches, test_count);
    const double seconds = since(start);
    const double train_loss = loss_sum / double(seen), train_acc = double(correct) / double(seen);
    const double test_acc = double(test.correct) / double(test_count);

    char line[256];
    std::snprintf(line, sizeof line, "epoch %d, loss %.4f, train acc %.3f, test acc %.3f, time %.1f sec", epoch + 1,
                  train_loss, train_acc, test_acc, seconds);
    std::cout << line << std::endl;

    auto settings = run_settings(o);
    vgg::io::save_training_checkpoint(o.save, *net, optimizer,
                                      {.epoch = epoch + 1, .network_step = std::int64_t(net->step()), .metadata = settings});
    char json[512];
    std::snprintf(json, sizeof json,
                  "{\"epoch\": %d, \"train_loss\": %.6f, \"train_acc\": %.6f, \"test_loss\": %.6f, \"test_acc\": %.6f, "
                  "\"train_seconds\": %.2f, \"seconds\": %.2f, \"images_per_second\": %.2f, \"threads\": %d, \"seed\": %llu}",
                  epoch + 1, train_loss, train_acc, test.loss, test_acc, train_seconds, seconds,
                  double(seen) / train_seconds, net->threads(), (unsigned long long)o.seed);
    append_line(o.log, json);
  }
  std::cout << "checkpoint: " << o.save.string() << std::endl;
  return 0;
}

template <class Net>
int evaluate_checkpoint(const Options& o) {
  const auto test_set = vgg::data::load_dataset(o.data, vgg::data::Split::test);
  auto net = std::make_unique<Net>(o.seed);
  if (o.threads > 0) net->set_threads(o.threads);
  vgg::io::load_weights(o.evaluate, *net);
  vgg::data::Batcher batches(test_set, {.batch_size = std::size_t(o.batch_size), .output_size = o.resize, .shuffle = false});
  std::size_t count = 0;
  const auto r = evaluate(*net, batches, count);
  std::printf("test loss %.4f, test acc %.4f (%zu images)\n", r.loss, double(r.correct) / double(count), count);
  return 0;
}

template <int S, int D, class B>
int run(const Options& o) {
  using Net = typename vgg::vgg11<vgg::Input<1, S, S>, 10, D>::template on<B>;
  if (!o.evaluate.empty()) return evaluate_checkpoint<Net>(o);
  if (o.optimizer == "sgd") return train<Net>(o, vgg::Sgd<B>({.lr = o.lr, .momentum = 0.9f}));
  return train<Net>(o, vgg::Adam<B>({.lr = o.lr}));
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
  switch (o.resize) {
    case 224: return dispatch_width<224, B>(o);
    case 96: return dispatch_width<96, B>(o);
    case 64: return dispatch_width<64, B>(o);
    default: return dispatch_width<32, B>(o);
  }
}

/// The run on backend B; errors become messages and exit codes.
template <class B>
int run_on(const Options& options) {
  try {
    return dispatch<B>(options);
  } catch (const UsageError& e) {
    std::cerr << "vgg-train: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "vgg-train: " << e.what() << '\n';
    return 1;
  }
}

}  // namespace

#if defined(VGG_TRAIN_CUDA_UNIT)
// This file compiled again by nvcc (vgg_train_cuda.cu): the runs on the CUDA backend.
std::string vgg_train_cuda_problem() { return vgg::cuda::device_problem(); }
int vgg_train_cuda_main(int argc, char** argv) { return run_on<vgg::cuda::Backend>(parse_args(argc, argv)); }
#else
#if defined(VGG_TRAIN_HAVE_CUDA)
std::string vgg_train_cuda_problem();  // empty when a CUDA device is usable, else why not
int vgg_train_cuda_main(int argc, char** argv);
#endif

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "vgg-train: " << e.what() << '\n';
    return 2;
  }
  if (options.threads > 0) omp_set_num_threads(options.threads);
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
