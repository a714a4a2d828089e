// IDX reader: valid files (raw, gzip, detected by content) and every rejected kind of broken file.
// Fixtures come from tools/make_idx_fixtures.py: 5 images of 4 x 3, labels {3, 0, 9, 1, 7}.

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "vgg/data/idx.hpp"

namespace fs = std::filesystem;
using namespace vgg::data;

namespace {

const fs::path fixtures = fs::path(VGG_TEST_DATA_DIR) / "fixtures";

// Same formula as tools/make_idx_fixtures.py.
int fixture_pixel(int image, int row, int col) { return (image * 37 + row * 11 + col * 5 + 1) % 256; }

template <class F>
std::string data_error_of(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  return "<no DataError thrown>";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

void check_fixture_images(const IdxImages& images) {
  REQUIRE(images.count == 5);
  CHECK(images.rows == 4);
  CHECK(images.cols == 3);
  REQUIRE(images.pixels.size() == 5 * 4 * 3);
  for (int i = 0; i < 5; ++i)
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 3; ++c) CHECK(int(images.image(std::size_t(i))[std::size_t(r * 3 + c)]) == fixture_pixel(i, r, c));
}

}  // namespace

TEST_CASE("read_idx_images reads raw and gzip files with identical results") {
  check_fixture_images(read_idx_images(fixtures / "valid/train-images-idx3-ubyte"));
  check_fixture_images(read_idx_images(fixtures / "valid/t10k-images-idx3-ubyte.gz"));
}

TEST_CASE("gzip is detected by its magic bytes, not by the file name") {
  check_fixture_images(read_idx_images(fixtures / "gzip-content-no-suffix.idx"));
  check_fixture_images(read_idx_images(fixtures / "raw-content-gz-suffix.idx.gz"));
}

TEST_CASE("read_idx_labels reads raw and gzip labels") {
  const std::vector<std::uint8_t> expected{3, 0, 9, 1, 7};
  CHECK(read_idx_labels(fixtures / "valid/train-labels-idx1-ubyte") == expected);
  CHECK(read_idx_labels(fixtures / "valid/t10k-labels-idx1-ubyte.gz") == expected);
}

TEST_CASE("load_dataset finds the official names with and without .gz") {
  for (Split split : {Split::train, Split::test}) {
    const Dataset data = load_dataset(fixtures / "valid", split);
    check_fixture_images(data.images);
    CHECK(data.size() == 5);
    CHECK(data.labels == std::vector<std::uint8_t>{3, 0, 9, 1, 7});
    CHECK(data.num_classes == 10);
  }
}

TEST_CASE("wrong magic number is rejected with expected and found values") {
  const auto file = fixtures / "bad-magic.idx";
  const std::string message = data_error_of([&] { read_idx_images(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "0x00000803"));
  CHECK(contains(message, "0x03080000"));
}

TEST_CASE("a labels file is not accepted as images, nor images as labels") {
  const std::string as_images = data_error_of([&] { read_idx_images(fixtures / "labels-as-images.idx"); });
  CHECK(contains(as_images, "1 dimension"));
  CHECK(contains(as_images, "0x00000803"));
  const std::string as_labels = data_error_of([&] { read_idx_labels(fixtures / "valid/train-images-idx3-ubyte"); });
  CHECK(contains(as_labels, "3 dimension"));
  CHECK(contains(as_labels, "0x00000801"));
}

TEST_CASE("2-d images are rejected and the message says what was found") {
  const auto file = fixtures / "images-2d.idx";
  const std::string message = data_error_of([&] { read_idx_images(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "has 2 dimension"));
  CHECK(contains(message, "need 3"));
}

TEST_CASE("a short file is rejected naming expected and found byte counts") {
  const auto file = fixtures / "short.idx";
  const std::string message = data_error_of([&] { read_idx_images(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "truncated"));
  CHECK(contains(message, "expected 76 bytes"));  // 16 header + 5*4*3
  CHECK(contains(message, "found 69"));
}

TEST_CASE("a file cut inside its header is rejected") {
  const std::string message = data_error_of([&] { read_idx_images(fixtures / "short-header.idx"); });
  CHECK(contains(message, "header"));
  CHECK(contains(message, "expected at least 16 bytes, found 10"));
}

TEST_CASE("trailing bytes after the payload are rejected") {
  const auto file = fixtures / "trailing.idx";
  const std::string message = data_error_of([&] { read_idx_images(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "3 trailing bytes"));
  CHECK(contains(message, "expected exactly 76"));
  CHECK(contains(message, "found 79"));
}

TEST_CASE("a truncated gzip stream is an error, not a silently short file") {
  const auto file = fixtures / "short.idx.gz";
  const std::string message = data_error_of([&] { read_idx_images(file); });
  CHECK(contains(message, file.string()));
  CHECK((contains(message, "gzip") || contains(message, "truncated")));
}

TEST_CASE("labels out of range are rejected; num_classes widens the range") {
  const auto file = fixtures / "labels-out-of-range.idx";
  const std::string message = data_error_of([&] { read_idx_labels(file); });
  CHECK(contains(message, file.string()));
  CHECK(contains(message, "label 2 is 10"));
  CHECK(contains(message, "0..9"));
  CHECK(read_idx_labels(file, 11) == std::vector<std::uint8_t>{3, 0, 10, 1, 7});
  CHECK(contains(data_error_of([&] { read_idx_labels(fixtures / "valid/train-labels-idx1-ubyte", 5); }),
                 "label 2 is 9"));
  CHECK_THROWS_AS(read_idx_labels(file, 0), std::invalid_argument);
}

TEST_CASE("image and label counts must agree") {
  const std::string message = data_error_of([&] { load_dataset(fixtures / "count-mismatch", Split::train); });
  CHECK(contains(message, "count mismatch"));
  CHECK(contains(message, "5 images"));
  CHECK(contains(message, "4 labels"));
}

TEST_CASE("a missing directory or file says how to fetch the data") {
  const auto missing_dir = fixtures / "no-such-directory";
  const std::string dir_message = data_error_of([&] { load_dataset(missing_dir, Split::train); });
  CHECK(contains(dir_message, missing_dir.string()));
  CHECK(contains(dir_message, "scripts/fetch_data.sh"));

  const std::string labels_message = data_error_of([&] { load_dataset(fixtures / "missing-labels", Split::train); });
  CHECK(contains(labels_message, "train-labels-idx1-ubyte"));
  CHECK(contains(labels_message, "scripts/fetch_data.sh"));

  const std::string test_message = data_error_of([&] { load_dataset(fixtures / "missing-labels", Split::test); });
  CHECK(contains(test_message, "t10k-images-idx3-ubyte"));

  CHECK(contains(data_error_of([&] { read_idx_images(fixtures / "no-such-file"); }), "no-such-file"));
}

TEST_CASE("DataError is a std::runtime_error") {
  CHECK_THROWS_AS(read_idx_images(fixtures / "short.idx"), std::runtime_error);
}

// Only where scripts/fetch_data.sh has been run (never in CI): the real files load and have the
// documented split. The fixtures above carry the actual coverage.
TEST_CASE("fetched Fashion-MNIST, when present, has the documented shape") {
  const fs::path dir = fs::path(VGG_TEST_DATA_DIR) / ".." / ".." / "data" / "fashion-mnist";
  if (!fs::exists(dir / "MANIFEST.json")) {
    MESSAGE("data/fashion-mnist not fetched; skipping");
    return;
  }
  for (auto [split, per_class] : {std::pair{Split::train, 6000}, std::pair{Split::test, 1000}}) {
    const Dataset data = load_dataset(dir, split);
    CHECK(data.images.rows == 28);
    CHECK(data.images.cols == 28);
    CHECK(data.size() == std::size_t(per_class) * 10);
    std::size_t counts[10] = {};
    for (auto label : data.labels) ++counts[label];
    for (std::size_t count : counts) CHECK(count == std::size_t(per_class));
    // Class by class, as the manifest's split rule says.
    CHECK(data.labels.front() == 0);
    CHECK(data.labels.back() == 9);
  }
}
