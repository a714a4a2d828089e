// classify: the top-5 classes of one PNG or JPEG image, with softmax probabilities.
//
//   classify <checkpoint.safetensors> <image.png|jpg> <class-names.txt>
//   classify --write-random-checkpoint <checkpoint.safetensors> [seed]
//
// The image goes through torchvision's ImageNet evaluation preprocessing (shorter side resized to
// 256 with antialiased bilinear, centre crop 224, ImageNet mean and std); the class-name file has
// one name per line, line k naming class k. The second form writes randomly initialised weights
// of the network below, to try the program (and to test it) without trained weights.
#include <vgg/data/image_file.hpp>
#include <vgg/data/imagenet_preprocess.hpp>
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <span>
#include <stdexcept>
#include <system_error>
#include <string>
#include <vector>

// The chapter's VGG-11 layout at 1/16 width for 3 x 224 x 224 images and 1000 classes. When the
// torchvision-shaped presets (features / avgpool / classifier, torchvision's state_dict names;
// issue 14 item 3) land, they replace this line and torchvision's trained weights load directly.
using Net = vgg::vgg11<vgg::Input<3, 224, 224>, 1000, 16>;

namespace {

constexpr int kTop = 5;

int usage(const char* program) {
  std::fprintf(stderr,
               "usage: %s <checkpoint.safetensors> <image.png|jpg> <class-names.txt>\n"
               "       %s --write-random-checkpoint <checkpoint.safetensors> [seed]\n"
               "Prints the top-%d classes of the image with their softmax probabilities.\n",
               program, program, kTop);
  return 2;
}

// One name per line (a trailing '\r' is dropped); at most `classes` lines. Fewer names than
// classes is allowed with a warning: the remaining classes print as their index.
std::vector<std::string> read_class_names(const std::filesystem::path& path, int classes) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error))
    throw std::runtime_error("class names '" + path.string() + "': " +
                             (std::filesystem::exists(path, error) ? "not a regular file"
                                                                   : "no such file") +
                             "; expected a text file with one class name per line");
  std::ifstream in(path);
  if (!in) throw std::runtime_error("class names '" + path.string() + "' cannot be opened for reading");
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    names.push_back(line);
    if (int(names.size()) > classes)
      throw std::runtime_error("class names '" + path.string() + "' has more than " + std::to_string(classes) +
                               " lines; expected one name per class of the network (" + std::to_string(classes) + ")");
  }
  if (names.empty())
    throw std::runtime_error("class names '" + path.string() + "' is empty; expected one name per line");
  if (int(names.size()) < classes)
    std::fprintf(stderr, "classify: warning: '%s' names %zu of the network's %d classes; the others print as 'class N'\n",
                 path.c_str(), names.size(), classes);
  return names;
}

int write_random_checkpoint(const std::filesystem::path& path, std::uint64_t seed) {
  auto net = std::make_unique<Net>(seed);  // PyTorch's default initialisation
  vgg::io::save_weights(path, *net);
  std::printf("wrote random weights (seed %llu) of %s to %s\n", static_cast<unsigned long long>(seed),
              Net::architecture().c_str(), path.c_str());
  return 0;
}

int classify(const std::filesystem::path& checkpoint, const std::filesystem::path& image_path,
             const std::filesystem::path& names_path) {
  const std::vector<std::string> names = read_class_names(names_path, Net::num_classes);
  const vgg::data::Image image = vgg::data::read_image(image_path);
  const vgg::data::ImageNetPreprocess preprocess;  // resize 256, crop 224, ImageNet mean and std
  const vgg::data::Image input = preprocess(image);

  auto net = std::make_unique<Net>();
  vgg::io::load_weights(checkpoint, *net);
  net->eval();
  const auto logits = net->forward(std::span<const float>(input.pixels), /*batch=*/1);

  // Softmax in double, shifted by the maximum so that exp never overflows.
  std::vector<double> probabilities(Net::num_classes);
  double largest = logits(0, 0);
  for (int k = 1; k < Net::num_classes; ++k) largest = std::max(largest, double(logits(0, k)));
  double total = 0;
  for (int k = 0; k < Net::num_classes; ++k) total += probabilities[std::size_t(k)] = std::exp(double(logits(0, k)) - largest);
  for (double& p : probabilities) p /= total;
  std::vector<int> order(Net::num_classes);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + kTop, order.end(), [&](int a, int b) {
    return probabilities[std::size_t(a)] > probabilities[std::size_t(b)];
  });

  std::printf("%s: %d x %d pixels -> 3 x %d x %d (shorter side %d, centre crop %d)\n", image_path.c_str(), image.width,
              image.height, preprocess.crop_size, preprocess.crop_size, preprocess.resize_size, preprocess.crop_size);
  std::printf("top-%d of %d classes (rank, probability, class, name):\n", kTop, Net::num_classes);
  for (int rank = 0; rank < kTop; ++rank) {
    const int k = order[std::size_t(rank)];
    const std::string name = k < int(names.size()) ? names[std::size_t(k)] : "class " + std::to_string(k);
    std::printf("%d %.6f %d %s\n", rank + 1, probabilities[std::size_t(k)], k, name.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc >= 2 && std::string(argv[1]) == "--write-random-checkpoint") {
      if (argc != 3 && argc != 4) return usage(argv[0]);
      std::uint64_t seed = 1;
      if (argc == 4) {
        const std::string text = argv[3];
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
        if (error != std::errc() || end != text.data() + text.size() || text.empty()) {
          std::fprintf(stderr, "classify: the seed must be an integer in [0, 2^64), found '%s'\n", text.c_str());
          return 2;
        }
      }
      return write_random_checkpoint(argv[2], seed);
    }
    if (argc != 4) return usage(argv[0]);
    return classify(argv[1], argv[2], argv[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "classify: %s\n", e.what());
    return 1;
  }
}
