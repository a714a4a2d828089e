// Writes a small, learnable 28x28 data set in the official IDX layout (raw, not gzip) for the
// vgg-train smoke tests: class c is a bright 8x8 square at one of ten positions, plus noise.
// Usage: make_synthetic_idx DIR TRAIN_COUNT TEST_COUNT
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <vgg/random.hpp>

namespace {
void put_be32(std::ofstream& out, std::uint32_t v) {
  const unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                              static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  out.write(reinterpret_cast<const char*>(b), 4);
}

void write_split(const std::filesystem::path& dir, const std::string& prefix, std::uint32_t count, std::uint64_t seed) {
  vgg::Rng rng(seed);
  std::ofstream images(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary);
  std::ofstream labels(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary);
  put_be32(images, 0x803);
  put_be32(images, count);
  put_be32(images, 28);
  put_be32(images, 28);
  put_be32(labels, 0x801);
  put_be32(labels, count);
  std::vector<unsigned char> pixels(784);
  for (std::uint32_t i = 0; i < count; ++i) {
    const int label = int(i % 10);
    const int top = 2 + (label / 5) * 12, left = 1 + (label % 5) * 5;
    for (int p = 0; p < 784; ++p) {
      const int r = p / 28, c = p % 28;
      const bool on = r >= top && r < top + 8 && c >= left && c < left + 5;
      pixels[std::size_t(p)] = static_cast<unsigned char>((on ? 160 : 0) + int(rng.uniform(0.0f, 90.0f)));
    }
    images.write(reinterpret_cast<const char*>(pixels.data()), 784);
    const char l = char(label);
    labels.write(&l, 1);
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_synthetic_idx DIR TRAIN_COUNT TEST_COUNT\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  write_split(dir, "train", std::uint32_t(std::stoul(argv[2])), 1);
  write_split(dir, "t10k", std::uint32_t(std::stoul(argv[3])), 2);
  return 0;
}
