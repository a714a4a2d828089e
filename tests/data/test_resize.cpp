// Bilinear resize against torch's F.interpolate(align_corners=False) values in
// resize_reference.txt (tools/make_resize_reference.py), plus properties that hold for any image.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "vgg/data/resize.hpp"

using namespace vgg::data;

namespace {

struct ReferenceValue {
  int y, x;
  double value;
};

struct Reference {
  int rows = 0, cols = 0;
  std::vector<std::uint8_t> input;
  std::map<std::pair<int, int>, std::vector<ReferenceValue>> by_size;  // (out_rows, out_cols) -> values
};

Reference load_reference() {
  const auto path = std::filesystem::path(VGG_TEST_DATA_DIR) / "resize_reference.txt";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  Reference ref;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    if (line.rfind("input", 0) == 0) {
      std::string word;
      fields >> word >> ref.rows >> ref.cols;
      for (int i = 0; i < ref.rows * ref.cols; ++i) {
        int v = -1;
        in >> v;
        REQUIRE((v >= 0 && v <= 255));
        ref.input.push_back(static_cast<std::uint8_t>(v));
      }
      continue;
    }
    int out_rows = 0, out_cols = 0;
    ReferenceValue value{};
    if (fields >> out_rows >> out_cols >> value.y >> value.x >> value.value)
      ref.by_size[{out_rows, out_cols}].push_back(value);
  }
  return ref;
}

}  // namespace

TEST_CASE("Resizer matches torch bilinear (align_corners=False) to 1e-6") {
  const Reference ref = load_reference();
  REQUIRE(ref.rows == 28);
  REQUIRE(ref.input.size() == 28 * 28);
  // The fixture must cover the sizes the networks use.
  for (auto size : {std::pair{32, 32}, std::pair{64, 64}, std::pair{224, 224}}) REQUIRE(ref.by_size.count(size) == 1);
  std::size_t compared = 0;
  for (const auto& [size, values] : ref.by_size) {
    const Resizer resize(ref.rows, ref.cols, size.first, size.second);
    std::vector<float> out(resize.out_pixels());
    resize(ref.input, out);
    for (const ReferenceValue& v : values) {
      INFO("size " << size.first << "x" << size.second << " at (" << v.y << ", " << v.x << ")");
      CHECK(std::abs(double(out[std::size_t(v.y) * std::size_t(size.second) + std::size_t(v.x)]) - v.value) <= 1e-6);
      ++compared;
    }
  }
  CHECK(compared >= 36);
}

TEST_CASE("resizing to the same size only rescales to [0, 1]") {
  std::vector<std::uint8_t> image(28 * 28);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<std::uint8_t>((i * 7) % 256);
  const std::vector<float> out = resize_bilinear(image, 28, 28, 28, 28);
  for (std::size_t i = 0; i < image.size(); ++i) CHECK(out[i] == doctest::Approx(image[i] / 255.0).epsilon(1e-7));
}

TEST_CASE("a constant image stays constant and values stay in [0, 1]") {
  const std::vector<std::uint8_t> constant(28 * 28, 200);
  for (float v : resize_bilinear(constant, 28, 28, 224, 224)) CHECK(v == doctest::Approx(200.0 / 255.0).epsilon(1e-7));

  std::vector<std::uint8_t> checker(28 * 28);
  for (std::size_t i = 0; i < checker.size(); ++i) checker[i] = ((i / 28 + i % 28) % 2) ? 255 : 0;
  for (float v : resize_bilinear(checker, 28, 28, 64, 64)) {
    CHECK(v >= 0.0f);
    CHECK(v <= 1.0f);
  }
}

TEST_CASE("Resizer checks buffer sizes and dimensions") {
  const Resizer resize(28, 32);
  CHECK(resize.in_pixels() == 28 * 28);
  CHECK(resize.out_pixels() == 32 * 32);
  std::vector<std::uint8_t> in(28 * 28);
  std::vector<float> out(32 * 32);
  std::vector<float> too_small(32 * 31);
  CHECK_NOTHROW(resize(in, out));
  CHECK_THROWS_AS(resize(in, too_small), std::invalid_argument);
  CHECK_THROWS_AS(resize(std::span<const std::uint8_t>(in).first(10), out), std::invalid_argument);
  CHECK_THROWS_AS(Resizer(0, 32), std::invalid_argument);
}
