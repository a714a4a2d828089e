// torchvision's VGG (vgg::torchvision::vgg11 ... vgg19_bn): parameter counts against torchvision's
// published ones, print(net) and state_dict keys against fixtures written by torchvision itself
// (tools/torchvision_fixtures.py), the adaptive average pool, and a checkpoint round trip. Full-width
// nets are only used as types (counts, module printout): they are never allocated here.
#include <doctest/doctest.h>

#include <vgg/io/checkpoint.hpp>
#include <vgg/io/fine_tune.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace tv = vgg::torchvision;

// torchvision 0.14: sum(p.numel() for p in torchvision.models.<net>().parameters()).
static_assert(tv::vgg11<>::num_params == 132'863'336);
static_assert(tv::vgg11_bn<>::num_params == 132'868'840);
static_assert(tv::vgg13<>::num_params == 133'047'848);
static_assert(tv::vgg13_bn<>::num_params == 133'053'736);
static_assert(tv::vgg16<>::num_params == 138'357'544);
static_assert(tv::vgg16_bn<>::num_params == 138'365'992);
static_assert(tv::vgg19<>::num_params == 143'667'240);
static_assert(tv::vgg19_bn<>::num_params == 143'678'248);
static_assert(tv::vgg16<>::input_shape == vgg::Shape{3, 224, 224});
static_assert(tv::vgg16<>::feature_shape == vgg::Shape{512, 7, 7});
static_assert(tv::vgg16<>::num_classes == 1000);
static_assert(tv::vgg16<>::torchvision_layout && !vgg::vgg16<vgg::Input<3, 224, 224>>::torchvision_layout);

namespace {

std::string read_text(const std::string& name) {
  const std::string path = std::string(VGG_TEST_DATA_DIR) + "/fixtures/" + name;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open fixture " << path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> read_lines(const std::string& name) {
  std::istringstream in(read_text(name));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

template <class Net>
std::string printed() {
  std::ostringstream os;
  vgg::print_modules<Net>(os);
  return os.str();
}

/// The state_dict keys of a net in torch's order (per module: weight, bias, running_mean,
/// running_var, num_batches_tracked), from the names the checkpoint writer uses.
template <class Net>
std::vector<std::string> state_dict_keys(Net& net) {
  std::vector<std::string> keys;
  net.for_each_parameter([&](const vgg::ParameterView& p) { keys.push_back(p.name); });
  net.for_each_state([&](const vgg::StateView& v) { keys.push_back(v.name); });
  net.for_each_counter([&](const vgg::CounterView& c) { keys.push_back(c.name); });
  const auto rank = [](const std::string& key) {
    const std::string suffix = key.substr(key.rfind('.') + 1);
    const char* order[] = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"};
    return int(std::find(std::begin(order), std::end(order), suffix) - std::begin(order));
  };
  const auto module = [](const std::string& key) { return key.substr(0, key.rfind('.')); };
  const auto index = [&](const std::string& key) {  // "features.12.weight" -> (0, 12); classifier after
    const std::string m = module(key);
    return std::pair{m.rfind("classifier", 0) == 0 ? 1 : 0, std::stoi(m.substr(m.find('.') + 1))};
  };
  std::stable_sort(keys.begin(), keys.end(), [&](const std::string& a, const std::string& b) {
    return std::pair{index(a), rank(a)} < std::pair{index(b), rank(b)};
  });
  return keys;
}

}  // namespace

TEST_CASE("print_modules of torchvision-layout nets is print(torchvision.models.<net>())") {
  CHECK(printed<tv::vgg11<>>() == read_text("torchvision_vgg11.print"));
  CHECK(printed<tv::vgg11_bn<>>() == read_text("torchvision_vgg11_bn.print"));
  CHECK(printed<tv::vgg16<>>() == read_text("torchvision_vgg16.print"));
}

TEST_CASE("checkpoint names of torchvision-layout nets are torchvision's state_dict keys") {
  // Names do not depend on widths: a width-divided net (never the full one) is enough.
  auto small = std::make_unique<tv::vgg11<10, 64, vgg::Input<3, 32, 32>>>(1);
  CHECK(state_dict_keys(*small) == read_lines("torchvision_vgg11.keys"));
  auto small_bn = std::make_unique<tv::vgg11_bn<10, 64, vgg::Input<3, 32, 32>>>(1);
  CHECK(state_dict_keys(*small_bn) == read_lines("torchvision_vgg11_bn.keys"));
  auto small16 = std::make_unique<tv::vgg16<10, 64, vgg::Input<3, 32, 32>>>(1);
  CHECK(state_dict_keys(*small16) == read_lines("torchvision_vgg16.keys"));
  // The chapter's nets keep the chapter's names.
  auto chapter = std::make_unique<vgg::vgg11<vgg::Input<1, 32, 32>, 10, 64>>(1);
  std::vector<std::string> names;
  chapter->for_each_parameter([&](const vgg::ParameterView& p) { names.push_back(p.name); });
  CHECK(names.front() == "vgg_block_1.0.weight");
  CHECK(names.back() == "fc.7.bias");
}

namespace {
using Pool = vgg::AdaptiveAvgPool2d<vgg::Shape{1, 3, 3}, 2, 2, vgg::cpu::Backend>;
using Grow = vgg::AdaptiveAvgPool2d<vgg::Shape{2, 3, 5}, 7, 7, vgg::cpu::Backend>;
using Same = vgg::AdaptiveAvgPool2d<vgg::Shape{4, 7, 7}, 7, 7, vgg::cpu::Backend>;
}  // namespace

TEST_CASE("AdaptiveAvgPool2d bins as PyTorch: start floor(i*in/out), end ceil((i+1)*in/out)") {
  static_assert(Same::is_identity(vgg::Mode::train) && !Pool::is_identity(vgg::Mode::eval));
  vgg::cpu::Backend::Context exec;
  vgg::RunContext run{};
  // 3x3 -> 2x2: rows and columns {0,1} and {1,2} (overlapping bins).
  const float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  float y[4] = {};
  Pool pool;
  pool.forward(exec, x, y, 1, run);
  CHECK(y[0] == doctest::Approx((1 + 2 + 4 + 5) / 4.0));
  CHECK(y[1] == doctest::Approx((2 + 3 + 5 + 6) / 4.0));
  CHECK(y[2] == doctest::Approx((4 + 5 + 7 + 8) / 4.0));
  CHECK(y[3] == doctest::Approx((5 + 6 + 8 + 9) / 4.0));
  // Torch: nn.AdaptiveAvgPool2d(2)(torch.arange(1., 10.).view(1, 1, 3, 3)) = [[3, 4], [6, 7]].
  CHECK(y[0] == doctest::Approx(3.0));
  CHECK(y[3] == doctest::Approx(7.0));
}

TEST_CASE("AdaptiveAvgPool2d backward is the adjoint of forward (3x5 -> 7x7, batch 2)") {
  vgg::cpu::Backend::Context exec;
  vgg::RunContext run{};
  constexpr int n = 2;
  const std::size_t in = n * Grow::input_shape.size(), out = n * Grow::output_shape.size();
  std::vector<float> x(in), y(out), dy(out), dx(in, 123.0f);
  for (std::size_t i = 0; i < in; ++i) x[i] = float(int(i * 37 % 11) - 5);
  for (std::size_t i = 0; i < out; ++i) dy[i] = float(int(i * 13 % 7) - 3);
  Grow pool;
  pool.forward(exec, x.data(), y.data(), n, run);
  // Row 0 of a 3-row input into 7 rows: bin 0 is row 0 only; 5 columns into 7: bin 0 is column 0.
  CHECK(y[0] == x[0]);
  std::vector<float> dy_copy = dy;
  pool.backward(exec, x.data(), y.data(), dy_copy.data(), dx.data(), n, run);
  const double lhs = std::inner_product(y.begin(), y.end(), dy.begin(), 0.0);
  const double rhs = std::inner_product(x.begin(), x.end(), dx.begin(), 0.0);
  CHECK(lhs == doctest::Approx(rhs).epsilon(1e-5));
}

TEST_CASE("AdaptiveAvgPool2d's backward gather visits exactly the bins that contain each input index") {
  // The closed forms behind the gather (the CPU and CUDA kernels' shared body) against a search.
  namespace ew = vgg::elementwise;
  for (int in = 1; in <= 40; ++in)
    for (int out = 1; out <= 40; ++out)
      for (int r = 0; r < in; ++r) {
        int first = -1, last = -1;
        for (int i = 0; i < out; ++i)
          if (ew::adaptive_start(i, in, out) <= r && r < ew::adaptive_end(i, in, out)) {
            if (first < 0) first = i;
            last = i + 1;
          }
        INFO("input ", in, ", output ", out, ", index ", r);
        REQUIRE(ew::adaptive_first_bin(r, in, out) == first);
        REQUIRE(ew::adaptive_last_bin(r, in, out) == last);
      }
}

TEST_CASE("AdaptiveAvgPool2d backward equals the scatter of each bin's gradient, bit for bit (13x9 -> 7x7)") {
  using Odd = vgg::AdaptiveAvgPool2d<vgg::Shape{3, 13, 9}, 7, 7, vgg::cpu::Backend>;
  vgg::cpu::Backend::Context exec;
  vgg::RunContext run{};
  constexpr int n = 2, h = 13, w = 9, oh = 7, ow = 7;
  const long planes = n * 3;
  std::vector<float> dy(std::size_t(planes * oh * ow)), dx(std::size_t(planes * h * w), 5.0f);
  vgg::Rng rng(3);
  for (float& v : dy) v = rng.uniform(-1.0f, 1.0f);
  std::vector<float> expected(dx.size(), 0.0f);
  for (long p = 0; p < planes; ++p)
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) {
        const int h0 = vgg::elementwise::adaptive_start(i, h, oh), h1 = vgg::elementwise::adaptive_end(i, h, oh);
        const int w0 = vgg::elementwise::adaptive_start(j, w, ow), w1 = vgg::elementwise::adaptive_end(j, w, ow);
        const float g = dy[std::size_t((p * oh + i) * ow + j)] / float((h1 - h0) * (w1 - w0));
        for (int r = h0; r < h1; ++r)
          for (int c = w0; c < w1; ++c) expected[std::size_t((p * h + r) * w + c)] += g;
      }
  std::vector<float> x(dx.size()), y(dy.size());
  Odd pool;
  pool.backward(exec, x.data(), y.data(), dy.data(), dx.data(), n, run);
  CHECK(std::memcmp(dx.data(), expected.data(), dx.size() * sizeof(float)) == 0);
}

TEST_CASE("a torchvision-layout checkpoint round-trips with torchvision names") {
  using Net = tv::vgg11_bn<10, 64, vgg::Input<3, 32, 32>>;  // features 1x1: the pool repeats them 7x7
  auto a = std::make_unique<Net>(7);
  auto b = std::make_unique<Net>(8);
  std::vector<float> x(2 * Net::input_shape.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 29 % 17) - 8) / 8.0f;
  // A training pass moves the running statistics away from their initial values.
  a->train();
  (void)a->forward(std::span<const float>(x), 2);
  a->eval();
  const auto path = std::filesystem::temp_directory_path() / "vgg_test_torchvision_roundtrip.safetensors";
  vgg::io::save_weights(path, *a);
  {
    const vgg::io::SafetensorsFile file = vgg::io::load_safetensors(path);
    CHECK(file.contains("features.0.weight"));
    CHECK(file.contains("features.1.running_mean"));
    CHECK(file.contains("features.1.num_batches_tracked"));
    CHECK(file.contains("classifier.6.bias"));
    CHECK(!file.contains("fc.7.bias"));
  }
  vgg::io::load_weights(path, *b);
  std::filesystem::remove(path);
  std::vector<float> la, lb;
  const auto ya = a->forward(std::span<const float>(x), 2);
  la.assign(ya.data(), ya.data() + ya.size());
  const auto yb = b->forward(std::span<const float>(x), 2);
  lb.assign(yb.data(), yb.data() + yb.size());
  CHECK(la == lb);
}

TEST_CASE("fine-tuning a torchvision-layout net: 1000 classes to 10, classifier.6 re-initialised, features frozen") {
  using Source = tv::vgg11_bn<1000, 64, vgg::Input<3, 32, 32>>;
  using Net = tv::vgg11_bn<10, 64, vgg::Input<3, 32, 32>>;
  static_assert(Net::first_classifier_layer == Net::num_feature_layers + 2,
                "torchvision's head starts with AdaptiveAvgPool2d and a module-less flatten");
  auto source = std::make_unique<Source>(3);
  const auto path = std::filesystem::temp_directory_path() / "vgg_test_torchvision_fine_tune.safetensors";
  vgg::io::save_weights(path, *source);
  auto net = std::make_unique<Net>(5);
  const auto result = vgg::io::load_for_fine_tuning(path, *net, {.seed = 5});
  std::filesystem::remove(path);
  CHECK(result.last_layer_reinitialised);
  CHECK(result.last_layer == "classifier.6");
  CHECK(result.checkpoint_classes == 1000);
  std::map<std::string, std::vector<float>> from, loaded;
  source->for_each_parameter([&](const vgg::ParameterView& p) { from[p.name].assign(p.value.begin(), p.value.end()); });
  net->for_each_parameter([&](const vgg::ParameterView& p) { loaded[p.name].assign(p.value.begin(), p.value.end()); });
  int same = 0;
  for (const auto& [name, values] : loaded)
    if (!name.starts_with("classifier.6.")) same += values == from.at(name);
  CHECK(same == int(loaded.size()) - 2);

  // Frozen features: three SGD steps move the classifier and leave every features.* tensor as it was.
  net->freeze_features();
  net->train();
  std::vector<float> x(4 * Net::input_shape.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 31 % 19) - 9) / 9.0f;
  const std::vector<std::int32_t> labels = {0, 3, 7, 9};
  vgg::Sgd sgd({.lr = 1e-2f, .momentum = 0.9f});
  for (int step = 0; step < 3; ++step) vgg::train_step(*net, sgd, x, labels);
  int features = 0, features_same = 0, classifier_changed = 0;
  net->for_each_parameter([&](const vgg::ParameterView& p) {
    const std::vector<float> now(p.value.begin(), p.value.end());
    if (p.name.starts_with("features.")) {
      ++features;
      features_same += now == loaded.at(p.name);
    } else {
      classifier_changed += now != loaded.at(p.name);
    }
  });
  CHECK(features == 32);  // 8 convs and 8 batch norms, a weight and a bias each
  CHECK(features_same == features);
  CHECK(classifier_changed == 6);
}

namespace {
std::string golden(const char* name) { return std::string(VGG_TEST_DATA_DIR) + "/../golden/" + name; }

/// Loads the torchvision state dict written by tools/torch_to_safetensors.py (through
/// tools/make_golden_torchvision.py) and compares eval-mode logits with torchvision's, relative to
/// the largest |logit| (tests/golden/README.md's convention).
template <class Net>
void check_golden(const char* weights, const std::string& logits_name) {
  const vgg::io::SafetensorsFile io = vgg::io::load_safetensors(golden("torchvision_w32_io.safetensors"));
  constexpr int n = 2;
  const std::vector<std::int64_t> input_shape = {n, Net::input_shape.c, Net::input_shape.h, Net::input_shape.w};
  std::vector<float> x(std::size_t(n) * Net::input_shape.size()), expected(std::size_t(n) * Net::num_classes);
  io.read_f32("input", x, input_shape);
  io.read_f32(logits_name, expected, std::vector<std::int64_t>{n, Net::num_classes});
  auto net = std::make_unique<Net>(99);  // other values everywhere until the file is loaded
  vgg::io::load_weights(golden(weights), *net);
  net->eval();
  const auto y = net->forward(std::span<const float>(x), n);
  double largest = 0, error = 0, spread = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    largest = std::max(largest, double(std::abs(expected[i])));
    error = std::max(error, double(std::abs(y.data()[i] - expected[i])));
    spread = std::max(spread, double(std::abs(expected[i] - expected[i % Net::num_classes])));
  }
  INFO("max|ours - torchvision| = " << error << ", max|logit| = " << largest);
  CHECK(largest > 0.05);            // the golden logits are not degenerate ...
  CHECK(spread > 1e3 * 1e-5 * largest);  // ... and the two images are told apart well above the tolerance
  CHECK(error <= 1e-5 * largest);
}
}  // namespace

TEST_CASE("torchvision golden (1/32 width, 3x96x64: the 7x7 adaptive pool spreads 3x2 features): logits match") {
  check_golden<tv::vgg11_bn<10, 32, vgg::Input<3, 96, 64>>>("torchvision_vgg11_bn_w32.safetensors", "vgg11_bn.logits");
  check_golden<tv::vgg16<10, 32, vgg::Input<3, 96, 64>>>("torchvision_vgg16_w32.safetensors", "vgg16.logits");
}
