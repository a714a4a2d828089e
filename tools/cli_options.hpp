#pragma once
// The command line of vgg-train: flags, defaults, ranges and the usage messages, apart from the
// training code so that unit tests and a fuzzer can drive the parser without a network or data.
// It stays in tools/, not include/vgg/: the flags and their defaults are this tool's interface,
// not the library's. Flags are parsed by hand: a page of code gives exact control over the
// messages and the exit status 2 for usage errors, and spares users another dependency.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace vgg_train {

/// A mistake on the command line (or a setting that contradicts the checkpoint): exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline constexpr int kResizes[] = {224, 96, 64, 32};
/// 32 is for the torchvision models' small configuration alone (below).
inline constexpr int kWidthDivisors[] = {1, 2, 4, 8, 32};
/// --model: the chapter's 1-channel VGG-11, or a torchvision VGG (torchvision's layout and
/// state_dict names, 3 input channels) with 10 classes.
inline constexpr std::string_view kModels[] = {"chapter", "tv-vgg11", "tv-vgg11_bn", "tv-vgg16", "tv-vgg16_bn"};
/// The (--resize, --width-divisor) pairs a torchvision model is compiled for: torchvision's own
/// size, and a small one for tests (its 1x1 features are repeated to 7x7 by the average pool),
/// compiled for the CPU only. Each pair costs a full training loop's compile time.
struct TorchvisionSize {
  int resize, width_divisor;
};
inline constexpr TorchvisionSize kTorchvisionSizes[] = {{224, 1}, {32, 32}};
inline constexpr const char* kTorchvisionSizesText =
    "--resize 224 --width-divisor 1 (torchvision's size) or --resize 32 --width-divisor 32 (a small test "
    "configuration, CPU only)";
inline bool is_torchvision_model(std::string_view model) { return model.starts_with("tv-"); }
/// Each thread owns per-thread workspaces and libgomp refuses to start many hundreds of threads,
/// so --threads is capped: 256 covers the largest common machines (2 x 128 hardware threads);
/// more threads than cores only add contention.
inline constexpr int kMaxThreads = 256;
/// Epoch numbers are ints in the training loop and in messages.
inline constexpr int kMaxEpochs = std::numeric_limits<int>::max();
/// --collective-timeout: a week covers any step; longer is a typo.
inline constexpr int kMaxCollectiveTimeout = 7 * 24 * 3600;

struct Options {
  std::filesystem::path data = "data/fashion-mnist";
  int epochs = 5;
  int batch_size = 64;  ///< as requested; runs use at most the data set's size
  float lr = 1e-3f;
  std::string optimizer = "adam";
  int resize = 224;
  int width_divisor = 8;          ///< default 8 for the chapter's net, 1 for a torchvision model
  std::string model = "chapter";  ///< chapter | tv-vgg11 | tv-vgg11_bn | tv-vgg16 | tv-vgg16_bn
  int threads = 0;  ///< 0: OpenMP's default (all cores)
  std::string device = "cpu";  ///< cpu | cuda | auto (the GPU when one is usable, else the CPU)
  std::uint64_t seed = 1;
  std::filesystem::path save;  ///< default derived from resize and width
  bool resume = false;
  bool overwrite = false;  ///< a fresh run may replace an existing checkpoint at --save
  std::size_t limit = 0;   ///< 0: all training images
  std::filesystem::path evaluate;  ///< evaluation mode when set
  std::filesystem::path log;       ///< default: <save>.metrics.jsonl
  bool help = false;               ///< --help: print kHelp, do nothing else
  bool distributed = false;        ///< data-parallel over the ranks of mpirun (batch_size is global)
  int collective_timeout = 300;    ///< seconds one collective may wait before the job is aborted; 0: never
  std::string overlap = "auto";    ///< gradient reduction during backward (--distributed): on, off, auto
  std::string precision = "fp32";  ///< fp32 | bf16 (mixed: bf16 operands, fp32 sums, master weights and loss)
  std::filesystem::path init_from; ///< fine-tuning: a fresh run starts from these weights
  bool freeze_features = false;    ///< fine-tuning: the conv blocks get no updates
};

inline const char* const kHelp = R"(Usage: vgg-train [options]

Trains the D2L chapter's VGG-11 (every width divided by --width-divisor) on Fashion-MNIST resized to
--resize x --resize, or evaluates a saved checkpoint on the test set. --model picks a torchvision VGG
instead, to fine-tune pretrained weights (--init-from).

Options:
  --model NAME           chapter | tv-vgg11 | tv-vgg11_bn | tv-vgg16 | tv-vgg16_bn (default chapter).
                         chapter: the D2L chapter's VGG-11, 1 input channel. tv-*: torchvision's
                         vgg11 ... vgg16_bn (its layout and state_dict names, so a converted
                         torchvision checkpoint loads) with 10 classes; the grey images are copied
                         into 3 channels and normalised with ImageNet's mean (0.485, 0.456, 0.406)
                         and std (0.229, 0.224, 0.225), as a pretrained torchvision net expects.
                         tv-* runs at --resize 224 --width-divisor 1 (their default), or at
                         --resize 32 --width-divisor 32 (a small test configuration, CPU only)
  --data DIR             IDX files (default data/fashion-mnist; fetch with scripts/fetch_data.sh)
  --epochs N             epochs to train in total, 1 to 2147483647 (default 5)
  --batch-size N         mini-batch size, at least 1 (default 64; at most the data set is used)
  --lr X                 learning rate, a positive float (default 1e-3)
  --optimizer NAME       adam | sgd (SGD uses momentum 0.9) (default adam)
  --resize S             input size: 224, 96, 64 or 32 (default 224)
  --width-divisor D      1, 2, 4 or 8 (default 8, the chapter's small net); tv-*: 1 (default) or 32
  --threads N            compute threads, 1 to 256; 0: all cores (default 0)
  --device NAME          cpu | cuda | auto (auto: the GPU when one is usable, else the CPU) (default cpu)
  --precision P          fp32 | bf16 (default fp32). bf16 is mixed precision: the convolution and
                         linear products take bf16 operands and sum in fp32; weights, optimizer
                         state, activations and loss stay fp32. It runs where the CPU has
                         AVX512-BF16; elsewhere (and on --device cuda) the run is fp32, and the
                         first line says which kernels run
  --seed N               seed for initialisation, shuffling and dropout, 0 to 2^64-1 (default 1)
  --save PATH            checkpoint written atomically after every epoch
                         (default runs/vgg11_w<D>_<S>.safetensors; tv-*: runs/<model>_w<D>_<S>.safetensors)
  --resume               continue from the checkpoint at --save
  --overwrite            let a fresh run (no --resume) replace an existing checkpoint at --save
  --limit N              train on the first N training images only (smoke runs; 0: all)
  --log PATH             JSON-lines metrics log (default <save>.metrics.jsonl)
  --evaluate PATH        load the weights at PATH and report test accuracy; no training
  --init-from PATH       fine-tuning: start a fresh run from the weights at PATH (matched by tensor
                         name and shape); a last layer with another class count is re-initialised
                         (a torchvision checkpoint's 1000-class classifier.6 becomes 10 classes).
                         With a tv-* model, PATH may be torchvision's .pth converted by
                         tools/torch_to_safetensors.py
  --freeze-features      fine-tuning: the conv blocks get no updates (no conv backward is computed);
                         only the classifier trains. Saved in the checkpoint, like --model: --resume
                         must match
  --distributed          data-parallel training over the ranks of mpirun (MPI builds);
                         --batch-size is the global batch, split over the ranks; rank 0 alone
                         prints, logs and saves. With --device cuda each rank trains on the GPU
                         of its local rank (one GPU per rank) and the gradients are reduced by
                         NCCL (builds with NCCL); --device auto: the GPUs when every rank has
                         one, else the CPU
  --collective-timeout S with --distributed: abort the whole job when one collective has waited S
                         seconds for a dead or hung rank, 0 to 604800; 0: never (default 300)
  --overlap on|off|auto  with --distributed: reduce gradient buckets during the backward pass (on) or
                         after it (off); auto (default): on when the ranks span several hosts,
                         where the transfer can hide behind the convolutions' backward
  --help                 this text

Each option may be given once. Training stops with exit status 1 when the loss, a gradient or a
weight becomes NaN or infinite; the last checkpoint written stays as it was.

Exit status: 0 success, 1 runtime error (data, checkpoint, numerical failure), 2 usage error.
)";

namespace detail {

inline std::string quote(std::string_view text) { return "'" + std::string(text) + "'"; }

/// An integer flag value in [lo, hi]; "-1" for an unsigned flag, "1.5", "12abc" or " 3" are refused.
template <class Int>
Int parse_integer(std::string_view flag, std::string_view text, Int lo, Int hi) {
  Int value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  const bool whole = end == text.data() + text.size();
  const std::string range = std::to_string(lo) + " to " + std::to_string(hi);
  if (error == std::errc::result_out_of_range || (error == std::errc{} && whole && (value < lo || value > hi)))
    throw UsageError(std::string(flag) + " " + std::string(text) + " is out of range: expected " + range);
  if (error != std::errc{} || !whole)
    throw UsageError(std::string(flag) + " expects an integer from " + range + ", found " + quote(text));
  return value;
}

/// A positive, finite float: the learning rate. Values a float cannot hold are out of range.
inline float parse_positive_float(std::string_view flag, std::string_view text) {
  constexpr float lo = std::numeric_limits<float>::min(), hi = std::numeric_limits<float>::max();
  char range[96];
  std::snprintf(range, sizeof range, "a positive number from %g to %g", double(lo), double(hi));
  // from_chars accepts neither "+1" nor leading spaces, like the integer flags.
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  const bool whole = end == text.data() + text.size();
  if (error == std::errc::invalid_argument || !whole)
    throw UsageError(std::string(flag) + " expects a number, found " + quote(text));
  if (std::isnan(value)) throw UsageError(std::string(flag) + " must be " + range + ", found " + quote(text));
  if (error == std::errc{} && value <= 0) {
    char found[64];
    std::snprintf(found, sizeof found, "%g", value);
    throw UsageError(std::string(flag) + " must be positive, found " + found);
  }
  // Judged after rounding to float: what the run will use must be a normal, finite float.
  // Compared as a double first: from FLT_MAX + half an ulp (2^103) up, a float rounds to infinity.
  const bool too_large = error == std::errc::result_out_of_range || value >= double(hi) + 0x1p103;
  const float rounded = too_large ? 0.0f : float(value);
  if (too_large || rounded < lo) {
    char found[64] = "";
    if (error == std::errc{}) std::snprintf(found, sizeof found, ", found %g", value);
    throw UsageError(std::string(flag) + " " + std::string(text) + " is out of range: expected " + range + found);
  }
  return rounded;
}

template <std::size_t N>
int parse_choice(std::string_view flag, std::string_view text, const int (&choices)[N], const char* listed) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size())
    throw UsageError(std::string(flag) + " expects one of " + listed + ", found " + quote(text));
  if (std::find(std::begin(choices), std::end(choices), value) == std::end(choices))
    throw UsageError(std::string(flag) + " " + std::to_string(value) + " is not instantiated; choose " + listed);
  return value;
}

}  // namespace detail

/// requires: nothing (the arguments are untrusted).
/// ensures: the options, validated; or UsageError naming the flag, what was found and what is
/// expected. Never exits and never prints: --help sets `help`.
inline Options parse_args(std::span<const std::string_view> args) {
  using namespace detail;
  Options o;
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view flag = args[i];
    if (flag == "--help" || flag == "-h") {
      o.help = true;
      return o;
    }
    auto value = [&]() -> std::string_view {
      if (i + 1 >= args.size()) throw UsageError(std::string(flag) + " needs a value");
      return args[++i];
    };
    auto path = [&]() -> std::filesystem::path {
      const std::string_view text = value();
      if (text.empty()) throw UsageError(std::string(flag) + " needs a non-empty path");
      return std::filesystem::path(text);
    };
    static constexpr std::string_view known[] = {"--data", "--epochs", "--batch-size", "--lr", "--optimizer",
                                                  "--resize", "--width-divisor", "--threads", "--seed", "--save",
                                                  "--resume", "--overwrite", "--limit", "--log", "--evaluate",
                                                  "--device", "--distributed", "--collective-timeout", "--overlap",
                                                  "--precision", "--init-from", "--freeze-features", "--model"};
    if (std::find(std::begin(known), std::end(known), flag) == std::end(known))
      throw UsageError("unknown option " + quote(flag) + " (see --help)");
    // The last of two values silently winning hides typos in long command lines and scripts.
    if (!seen.insert(flag).second) throw UsageError(std::string(flag) + " is given twice; give each option once");

    if (flag == "--data") o.data = path();
    else if (flag == "--epochs") o.epochs = parse_integer<int>(flag, value(), 1, kMaxEpochs);
    else if (flag == "--batch-size") o.batch_size = parse_integer<int>(flag, value(), 1, std::numeric_limits<int>::max());
    else if (flag == "--lr") o.lr = parse_positive_float(flag, value());
    else if (flag == "--optimizer") {
      o.optimizer = std::string(value());
      if (o.optimizer != "adam" && o.optimizer != "sgd")
        throw UsageError("--optimizer must be adam or sgd, found " + quote(o.optimizer));
    } else if (flag == "--resize") o.resize = parse_choice(flag, value(), kResizes, "224, 96, 64 or 32");
    else if (flag == "--width-divisor") o.width_divisor = parse_choice(flag, value(), kWidthDivisors, "1, 2, 4, 8 or 32");
    else if (flag == "--threads") o.threads = parse_integer<int>(flag, value(), 0, kMaxThreads);
    else if (flag == "--seed") o.seed = parse_integer<std::uint64_t>(flag, value(), 0, UINT64_MAX);
    else if (flag == "--save") o.save = path();
    else if (flag == "--resume") o.resume = true;
    else if (flag == "--overwrite") o.overwrite = true;
    else if (flag == "--limit") o.limit = parse_integer<std::size_t>(flag, value(), 0, INT64_MAX);
    else if (flag == "--log") o.log = path();
    else if (flag == "--evaluate") o.evaluate = path();
    else if (flag == "--device") {
      o.device = std::string(value());
      if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
        throw UsageError("--device must be cpu, cuda or auto, found " + quote(o.device));
    } else if (flag == "--precision") {
      o.precision = std::string(value());
      if (o.precision != "fp32" && o.precision != "bf16")
        throw UsageError("--precision must be fp32 or bf16, found " + quote(o.precision));
    } else if (flag == "--distributed") o.distributed = true;
    else if (flag == "--collective-timeout")
      o.collective_timeout = parse_integer<int>(flag, value(), 0, kMaxCollectiveTimeout);
    else if (flag == "--overlap") {
      o.overlap = std::string(value());
      if (o.overlap != "on" && o.overlap != "off" && o.overlap != "auto")
        throw UsageError("--overlap must be on, off or auto, found " + quote(o.overlap));
    } else if (flag == "--init-from") o.init_from = path();
    else if (flag == "--freeze-features") o.freeze_features = true;
    else if (flag == "--model") {
      o.model = std::string(value());
      if (std::find(std::begin(kModels), std::end(kModels), o.model) == std::end(kModels))
        throw UsageError("--model must be chapter, tv-vgg11, tv-vgg11_bn, tv-vgg16 or tv-vgg16_bn, found " +
                         quote(o.model));
    }
  }
  const bool torchvision = is_torchvision_model(o.model);
  if (torchvision && !seen.count("--width-divisor")) o.width_divisor = 1;  // torchvision's widths
  if (torchvision) {
    const bool compiled = std::any_of(std::begin(kTorchvisionSizes), std::end(kTorchvisionSizes), [&](auto s) {
      return s.resize == o.resize && s.width_divisor == o.width_divisor;
    });
    if (!compiled)
      throw UsageError("--model " + o.model + " is not instantiated at --resize " + std::to_string(o.resize) +
                       " --width-divisor " + std::to_string(o.width_divisor) + "; choose " + kTorchvisionSizesText);
  } else if (o.width_divisor == 32) {
    throw UsageError("--width-divisor 32 is instantiated for the torchvision models (--model tv-...) only; the "
                     "chapter's net takes 1, 2, 4 or 8");
  }
  if (!o.init_from.empty() && o.resume)
    throw UsageError("--init-from and --resume contradict: --init-from starts a fresh run from other weights; "
                     "--resume continues the run at --save");
  if (!o.init_from.empty() && !o.evaluate.empty())
    throw UsageError("--init-from trains; --evaluate reads the weights at its own path: drop one of them");
  if (o.freeze_features && !o.evaluate.empty())
    throw UsageError("--freeze-features applies to training; --evaluate does not train");
  // DataParallel all-reduces every gradient, and frozen conv blocks have none.
  if (o.freeze_features && o.distributed)
    throw UsageError("--freeze-features is not supported with --distributed yet");
  if (!o.evaluate.empty() && o.resume)
    throw UsageError("--evaluate and --resume contradict: --evaluate only reads the weights at its path; "
                     "--resume continues training from --save");
  if (o.distributed && !o.evaluate.empty())
    throw UsageError("--distributed trains; --evaluate reads one checkpoint in one process: drop --distributed");
  if (seen.count("--collective-timeout") && !o.distributed)
    throw UsageError("--collective-timeout applies to --distributed runs only");
  if (seen.count("--overlap") && !o.distributed) throw UsageError("--overlap applies to --distributed runs only");
  if (o.resume && o.overwrite)
    throw UsageError("--resume and --overwrite contradict: --resume continues the checkpoint that --overwrite "
                     "would replace");
  if (o.save.empty())
    o.save = std::filesystem::path("runs") / ((torchvision ? o.model : std::string("vgg11")) + "_w" +
                                              std::to_string(o.width_divisor) + "_" + std::to_string(o.resize) +
                                              ".safetensors");
  if (o.log.empty()) o.log = std::filesystem::path(o.save.string() + ".metrics.jsonl");
  return o;
}

/// The settings a resumed run must share with the run that wrote the checkpoint. lr is written
/// with 9 significant digits, enough to give back the float exactly (1e-7 stays 1e-7).
inline std::map<std::string, std::string> run_settings(const Options& o) {
  char lr[32];
  std::snprintf(lr, sizeof lr, "%.9g", double(o.lr));
  return {{"seed", std::to_string(o.seed)},         {"batch_size", std::to_string(o.batch_size)},
          {"lr", lr},                               {"optimizer", o.optimizer},
          {"resize", std::to_string(o.resize)},     {"width_divisor", std::to_string(o.width_divisor)},
          {"limit", std::to_string(o.limit)},       {"precision", o.precision},
          {"freeze_features", o.freeze_features ? "true" : "false"},
          {"model", o.model}};
}

/// requires: nothing. ensures: whether a setting stored in a checkpoint equals this run's. lr
/// compares as a float, so checkpoints written with "%f" ("0.001000") still resume, while two
/// rates that "%f" printed alike (1e-7 and 4e-7: "0.000000") now differ.
inline bool same_setting(const std::string& key, const std::string& stored, const std::string& current) {
  if (key != "lr") return stored == current;
  float a = 0, b = 0;
  const auto ra = std::from_chars(stored.data(), stored.data() + stored.size(), a);
  const auto rb = std::from_chars(current.data(), current.data() + current.size(), b);
  return ra.ec == std::errc{} && rb.ec == std::errc{} && ra.ptr == stored.data() + stored.size() && a == b;
}

}  // namespace vgg_train
