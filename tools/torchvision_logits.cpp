// torchvision-logits: the eval-mode logits of a torchvision-format checkpoint for a batch of
// images, for tools/torchvision_parity.py (which compares them with torchvision's own).
//
//   torchvision-logits NET WEIGHTS.safetensors INPUT.safetensors OUT.safetensors [THREADS]
//
// NET is vgg11, vgg11_bn, vgg16 or vgg16_bn (vgg::torchvision::<NET><1000>, 3 x 224 x 224);
// WEIGHTS is what tools/torch_to_safetensors.py writes; INPUT holds the F32 tensor "input"
// [N, 3, 224, 224]; OUT gets the F32 tensor "logits" [N, 1000]. Four net types only, so that the
// target compiles quickly.
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace {

template <class Net>
int run(const std::filesystem::path& weights, const std::filesystem::path& input_path,
        const std::filesystem::path& out, int threads) {
  const vgg::io::SafetensorsFile input = vgg::io::load_safetensors(input_path);
  const std::vector<std::int64_t> shape = input.info("input").shape;
  const vgg::Shape s = Net::input_shape;
  if (shape.size() != 4 || shape[0] < 1 || shape[1] != s.c || shape[2] != s.h || shape[3] != s.w)
    throw std::runtime_error("'" + input_path.string() + "': tensor 'input' has shape " +
                             vgg::io::shape_to_string(shape) + ", expected [N," + std::to_string(s.c) + "," +
                             std::to_string(s.h) + "," + std::to_string(s.w) + "] with N >= 1");
  const int n = int(shape[0]);
  std::vector<float> x(std::size_t(n) * s.size());
  input.read_f32("input", x, shape);

  auto net = std::make_unique<Net>();
  if (threads > 0) net->set_threads(threads);
  vgg::io::load_weights(weights, *net);
  net->eval();
  const auto start = std::chrono::steady_clock::now();
  const auto logits = net->forward(std::span<const float>(x), n);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::vector<float> values(logits.data(), logits.data() + logits.size());
  const vgg::io::TensorRecord record =
      vgg::io::tensor_record("logits", {std::int64_t(n), std::int64_t(Net::num_classes)}, values);
  vgg::io::save_safetensors(out, std::span<const vgg::io::TensorRecord>(&record, 1),
                            {{"architecture", Net::architecture()}});
  std::printf("%s: batch %d, forward %.3f s (first pass, includes one-time set-up)\n", Net::architecture().c_str(), n,
              seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr,
                 "usage: %s vgg11|vgg11_bn|vgg16|vgg16_bn WEIGHTS.safetensors INPUT.safetensors OUT.safetensors "
                 "[THREADS]\n",
                 argv[0]);
    return 2;
  }
  const std::string net = argv[1];
  int threads = 0;
  if (argc == 6) {
    const std::string text = argv[5];
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), threads);
    if (error != std::errc() || end != text.data() + text.size() || threads < 0) {
      std::fprintf(stderr, "torchvision-logits: THREADS must be a non-negative integer, found '%s'\n", text.c_str());
      return 2;
    }
  }
  try {
    namespace tv = vgg::torchvision;
    if (net == "vgg11") return run<tv::vgg11<>>(argv[2], argv[3], argv[4], threads);
    if (net == "vgg11_bn") return run<tv::vgg11_bn<>>(argv[2], argv[3], argv[4], threads);
    if (net == "vgg16") return run<tv::vgg16<>>(argv[2], argv[3], argv[4], threads);
    if (net == "vgg16_bn") return run<tv::vgg16_bn<>>(argv[2], argv[3], argv[4], threads);
    std::fprintf(stderr, "torchvision-logits: unknown net '%s'; expected vgg11, vgg11_bn, vgg16 or vgg16_bn\n",
                 net.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torchvision-logits: %s\n", e.what());
    return 1;
  }
}
