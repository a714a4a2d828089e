// The vgg-train command line (tools/cli_options.hpp): defaults, ranges, contradictions and the
// messages of every refusal, without building a network or reading data.
#include <doctest/doctest.h>

#include <cli_options.hpp>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace {
vgg_train::Options parse(std::initializer_list<std::string_view> args) {
  const std::vector<std::string_view> list(args);
  return vgg_train::parse_args(list);
}
}  // namespace

#define CHECK_USAGE(args, text) CHECK_THROWS_WITH_AS(parse(args), doctest::Contains(text), vgg_train::UsageError)
#define ARGS(...) \
  { __VA_ARGS__ }

TEST_CASE("defaults are the chapter's recipe and the derived paths") {
  const auto o = parse({});
  CHECK(o.epochs == 5);
  CHECK(o.batch_size == 64);
  CHECK(o.lr == 1e-3f);
  CHECK(o.resize == 224);
  CHECK(o.width_divisor == 8);
  CHECK(o.save == "runs/vgg11_w8_224.safetensors");
  CHECK(o.log == "runs/vgg11_w8_224.safetensors.metrics.jsonl");
  CHECK_FALSE(o.overwrite);
  CHECK(parse({"--resize", "32", "--width-divisor", "2"}).save == "runs/vgg11_w2_32.safetensors");
  CHECK(parse({"--help", "--bogus"}).help);  // --help wins and does nothing else
}

TEST_CASE("numbers are parsed exactly and the extremes of each range are accepted") {
  CHECK(parse({"--seed", "18446744073709551615"}).seed == UINT64_MAX);
  CHECK(parse({"--seed", "0"}).seed == 0);
  CHECK(parse({"--epochs", "2147483647"}).epochs == 2147483647);
  CHECK(parse({"--threads", "256"}).threads == vgg_train::kMaxThreads);
  CHECK(parse({"--threads", "0"}).threads == 0);
  CHECK(parse({"--lr", "1e-7"}).lr == 1e-7f);
  CHECK(parse({"--lr", "3e38"}).lr == 3e38f);
  CHECK(parse({"--limit", "9223372036854775807"}).limit == std::size_t(INT64_MAX));
}

TEST_CASE("negative values of unsigned flags are refused, not wrapped to 2^64-1") {
  CHECK_USAGE(ARGS("--seed", "-1"), "--seed expects an integer from 0 to 18446744073709551615, found '-1'");
  CHECK_USAGE(ARGS("--limit", "-1"), "--limit expects an integer from 0 to 9223372036854775807, found '-1'");
  CHECK_USAGE(ARGS("--seed", "18446744073709551616"), "--seed 18446744073709551616 is out of range");
}

TEST_CASE("out-of-range numbers are reported as out of range, with the valid range") {
  CHECK_USAGE(ARGS("--epochs", "2147483648"), "--epochs 2147483648 is out of range: expected 1 to 2147483647");
  CHECK_USAGE(ARGS("--epochs", "0"), "--epochs 0 is out of range: expected 1 to 2147483647");
  CHECK_USAGE(ARGS("--batch-size", "0"), "--batch-size 0 is out of range: expected 1 to 2147483647");
  CHECK_USAGE(ARGS("--threads", "1000"), "--threads 1000 is out of range: expected 0 to 256");
  CHECK_USAGE(ARGS("--threads", "100000"), "--threads 100000 is out of range: expected 0 to 256");
  CHECK_USAGE(ARGS("--threads", "-2"), "--threads -2 is out of range");
  CHECK_USAGE(ARGS("--lr", "1e40"), "--lr 1e40 is out of range: expected a positive number from 1.17549e-38 to 3.40282e+38");
  CHECK_USAGE(ARGS("--lr", "1e400"), "--lr 1e400 is out of range");
  // Below the smallest normal float: the value is shown in %g, not as "0.000000".
  CHECK_USAGE(ARGS("--lr", "1e-50"), "--lr 1e-50 is out of range: expected a positive number from 1.17549e-38 to "
                                     "3.40282e+38, found 1e-50");
  CHECK_USAGE(ARGS("--lr", "0"), "--lr must be positive, found 0");
  CHECK_USAGE(ARGS("--lr", "-0.1"), "--lr must be positive, found -0.1");
  CHECK_USAGE(ARGS("--lr", "nan"), "--lr must be a positive number from");
  CHECK_USAGE(ARGS("--lr", "inf"), "--lr inf is out of range");
}

TEST_CASE("malformed numbers name the flag and the text") {
  CHECK_USAGE(ARGS("--lr", "fast"), "--lr expects a number, found 'fast'");
  CHECK_USAGE(ARGS("--lr", "1e-3x"), "--lr expects a number, found '1e-3x'");
  CHECK_USAGE(ARGS("--lr", ""), "--lr expects a number, found ''");
  CHECK_USAGE(ARGS("--epochs", "1.5"), "--epochs expects an integer from 1 to 2147483647, found '1.5'");
  CHECK_USAGE(ARGS("--epochs", " 3"), "found ' 3'");
  CHECK_USAGE(ARGS("--epochs", "+3"), "found '+3'");
  CHECK_USAGE(ARGS("--resize", "100"), "--resize 100 is not instantiated; choose 224, 96, 64 or 32");
  CHECK_USAGE(ARGS("--resize", "big"), "--resize expects one of 224, 96, 64 or 32, found 'big'");
  CHECK_USAGE(ARGS("--width-divisor", "3"), "--width-divisor 3 is not instantiated");
  CHECK_USAGE(ARGS("--optimizer", "rmsprop"), "--optimizer must be adam or sgd, found 'rmsprop'");
  CHECK_USAGE(ARGS("--epochs"), "--epochs needs a value");
  CHECK_USAGE(ARGS("--bogus"), "unknown option '--bogus'");
  CHECK_USAGE(ARGS("3"), "unknown option '3'");
}

TEST_CASE("a flag given twice is refused and named") {
  CHECK_USAGE(ARGS("--lr", "1e-3", "--lr", "1e-2"), "--lr is given twice");
  CHECK_USAGE(ARGS("--resume", "--resume"), "--resume is given twice");
  CHECK_USAGE(ARGS("--save", "a", "--epochs", "2", "--save", "b"), "--save is given twice");
}

TEST_CASE("contradictions and empty paths are refused") {
  CHECK_USAGE(ARGS("--evaluate", "w.safetensors", "--resume"), "--evaluate and --resume contradict");
  CHECK_USAGE(ARGS("--resume", "--overwrite"), "--resume and --overwrite contradict");
  CHECK_USAGE(ARGS("--save", ""), "--save needs a non-empty path");
  CHECK_USAGE(ARGS("--log", ""), "--log needs a non-empty path");
  CHECK_USAGE(ARGS("--data", ""), "--data needs a non-empty path");
  CHECK_USAGE(ARGS("--evaluate", ""), "--evaluate needs a non-empty path");
  CHECK(parse({"--overwrite"}).overwrite);
}

TEST_CASE("--distributed: its timeout, and the modes it cannot run in") {
  const auto o = parse({"--distributed"});
  CHECK(o.distributed);
  CHECK(o.collective_timeout == 300);
  CHECK_FALSE(parse({}).distributed);
  CHECK(parse({"--distributed", "--collective-timeout", "0"}).collective_timeout == 0);
  CHECK(parse({"--distributed", "--collective-timeout", "604800"}).collective_timeout == 604800);
  CHECK(parse({"--distributed", "--device", "auto"}).device == "auto");
  CHECK_USAGE(ARGS("--distributed", "--collective-timeout", "604801"), "--collective-timeout 604801 is out of range");
  CHECK_USAGE(ARGS("--distributed", "--collective-timeout", "-1"), "--collective-timeout -1 is out of range");
  CHECK_USAGE(ARGS("--collective-timeout", "10"), "--collective-timeout applies to --distributed runs only");
  CHECK(o.overlap == "auto");
  CHECK(parse({"--distributed", "--overlap", "on"}).overlap == "on");
  CHECK(parse({"--distributed", "--overlap", "off"}).overlap == "off");
  CHECK_USAGE(ARGS("--distributed", "--overlap", "yes"), "--overlap must be on, off or auto, found 'yes'");
  CHECK_USAGE(ARGS("--overlap", "on"), "--overlap applies to --distributed runs only");
  // --device cuda with --distributed is a run-time matter (NCCL in the build, a GPU per rank).
  CHECK(parse({"--distributed", "--device", "cuda"}).device == "cuda");
  CHECK(parse({"--distributed", "--device", "cuda", "--overlap", "on"}).overlap == "on");
  CHECK_USAGE(ARGS("--distributed", "--evaluate", "w.safetensors"), "drop --distributed");
  CHECK_USAGE(ARGS("--distributed", "--distributed"), "--distributed is given twice");
}

TEST_CASE("--precision: fp32 by default, bf16 on request, stored with the run's settings") {
  CHECK(parse({}).precision == "fp32");
  CHECK(parse({"--precision", "bf16"}).precision == "bf16");
  CHECK(parse({"--precision", "fp32"}).precision == "fp32");
  CHECK_USAGE(ARGS("--precision", "fp16"), "--precision must be fp32 or bf16, found 'fp16'");
  CHECK_USAGE(ARGS("--precision", "BF16"), "--precision must be fp32 or bf16, found 'BF16'");
  CHECK_USAGE(ARGS("--precision"), "--precision needs a value");
  CHECK_USAGE(ARGS("--precision", "bf16", "--precision", "bf16"), "--precision is given twice");
  // A resumed run must use the precision its checkpoint was trained with.
  CHECK(vgg_train::run_settings(parse({"--precision", "bf16"})).at("precision") == "bf16");
  CHECK(vgg_train::run_settings(parse({})).at("precision") == "fp32");
  CHECK_FALSE(vgg_train::same_setting("precision", "bf16", "fp32"));
}

TEST_CASE("the settings check keeps lr exactly and still accepts the old %f spelling") {
  auto o = parse({"--lr", "1e-7"});
  const auto settings = vgg_train::run_settings(o);
  CHECK(settings.at("lr") == "1.00000001e-07");
  CHECK(vgg_train::same_setting("lr", settings.at("lr"), settings.at("lr")));
  const auto other = vgg_train::run_settings(parse({"--lr", "4e-7"}));
  CHECK_FALSE(vgg_train::same_setting("lr", other.at("lr"), settings.at("lr")));
  // Checkpoints written before stored "%f": 1e-3 as "0.001000" still matches 1e-3 ...
  CHECK(vgg_train::same_setting("lr", "0.001000", vgg_train::run_settings(parse({})).at("lr")));
  // ... while "%f"'s "0.000000" (1e-7 and 4e-7 alike) matches neither.
  CHECK_FALSE(vgg_train::same_setting("lr", "0.000000", settings.at("lr")));
  CHECK_FALSE(vgg_train::same_setting("lr", "garbage", settings.at("lr")));
  CHECK(vgg_train::same_setting("seed", "1", "1"));
  CHECK_FALSE(vgg_train::same_setting("seed", "1", "01"));
  // Every float the parser accepts survives the round trip through the stored text.
  for (const char* lr : {"1e-7", "0.1", "3.3e-5", "1.17549435e-38", "3.40282347e38", "0.0007"}) {
    const auto s = vgg_train::run_settings(parse({"--lr", lr})).at("lr");
    CHECK_MESSAGE(std::stof(s) == parse({"--lr", lr}).lr, lr);
  }
}

TEST_CASE("fine-tuning flags: --init-from and --freeze-features, their contradictions and the saved setting") {
  const auto o = parse({"--init-from", "runs/base.safetensors", "--freeze-features"});
  CHECK(o.init_from == "runs/base.safetensors");
  CHECK(o.freeze_features);
  CHECK(parse({}).init_from.empty());
  CHECK_FALSE(parse({}).freeze_features);
  CHECK(parse({"--freeze-features", "--resume"}).freeze_features);  // a frozen run resumes frozen
  CHECK_USAGE(ARGS("--init-from", ""), "--init-from needs a non-empty path");
  CHECK_USAGE(ARGS("--init-from"), "--init-from needs a value");
  CHECK_USAGE(ARGS("--init-from", "a", "--resume"), "--init-from and --resume contradict");
  CHECK_USAGE(ARGS("--resume", "--init-from", "a"), "--init-from and --resume contradict");
  CHECK_USAGE(ARGS("--init-from", "a", "--evaluate", "b"), "--init-from trains; --evaluate");
  CHECK_USAGE(ARGS("--freeze-features", "--evaluate", "b"), "--freeze-features applies to training");
  CHECK_USAGE(ARGS("--freeze-features", "--distributed"), "not supported with --distributed");
  CHECK_USAGE(ARGS("--freeze-features", "--freeze-features"), "--freeze-features is given twice");
  CHECK_USAGE(ARGS("--init-from", "a", "--init-from", "b"), "--init-from is given twice");
  // Saved with the run: --resume of a frozen run must freeze too.
  CHECK(vgg_train::run_settings(o).at("freeze_features") == "true");
  CHECK(vgg_train::run_settings(parse({})).at("freeze_features") == "false");
}

TEST_CASE("--model: the chapter's net by default, torchvision's at the instantiated sizes only") {
  CHECK(parse({}).model == "chapter");
  CHECK(vgg_train::run_settings(parse({})).at("model") == "chapter");
  const auto tv = parse({"--model", "tv-vgg16"});
  CHECK(tv.model == "tv-vgg16");
  CHECK(tv.width_divisor == 1);  // torchvision's widths unless asked otherwise
  CHECK(tv.resize == 224);
  CHECK(tv.save == "runs/tv-vgg16_w1_224.safetensors");
  CHECK(vgg_train::run_settings(tv).at("model") == "tv-vgg16");
  const auto small = parse({"--model", "tv-vgg11_bn", "--resize", "32", "--width-divisor", "32"});
  CHECK(small.width_divisor == 32);
  CHECK(small.save == "runs/tv-vgg11_bn_w32_32.safetensors");
  for (const char* model : {"tv-vgg11", "tv-vgg16_bn", "chapter"}) CHECK(parse({"--model", model}).model == model);
  CHECK_USAGE(ARGS("--model", "vgg16"), "--model must be chapter, tv-vgg11, tv-vgg11_bn, tv-vgg16 or tv-vgg16_bn, found 'vgg16'");
  CHECK_USAGE(ARGS("--model", "tv-vgg16", "--resize", "64"),
              "--model tv-vgg16 is not instantiated at --resize 64 --width-divisor 1; choose --resize 224 "
              "--width-divisor 1");
  CHECK_USAGE(ARGS("--model", "tv-vgg16", "--width-divisor", "8"), "not instantiated at --resize 224 --width-divisor 8");
  CHECK_USAGE(ARGS("--model", "tv-vgg16", "--resize", "32"), "or --resize 32 --width-divisor 32");
  CHECK_USAGE(ARGS("--width-divisor", "32"), "--width-divisor 32 is instantiated for the torchvision models");
  CHECK_USAGE(ARGS("--model", "chapter", "--model", "tv-vgg11"), "--model is given twice");
}
