// IDX reader: valid files (raw, gzip, detected by content) and every rejected kind of broken file.
// Fixtures come from tools/make_idx_fixtures.py: 5 images of 4 x 3, labels {3, 0, 9, 1, 7}.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include "../io/hostile_files.hpp"
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

// A fresh directory per test case, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("vgg_idx_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(path, ignored);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

std::string be32(std::uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

// IDX files built here, as tools/make_idx_fixtures.py builds the committed ones.
std::string images_bytes(std::uint32_t count, std::uint32_t rows = 4, std::uint32_t cols = 3) {
  std::string bytes = be32(0x00000803) + be32(count) + be32(rows) + be32(cols);
  for (std::uint32_t i = 0; i < count; ++i)
    for (std::uint32_t r = 0; r < rows; ++r)
      for (std::uint32_t c = 0; c < cols; ++c) bytes += char(fixture_pixel(int(i), int(r), int(c)));
  return bytes;
}
std::string labels_bytes(std::uint32_t count) {
  std::string bytes = be32(0x00000801) + be32(count);
  for (std::uint32_t i = 0; i < count; ++i) bytes += char(i % 10);
  return bytes;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
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

// ---- Reliability (issue 12): hostile files cost bounded memory and get clear messages ----------

TEST_CASE("image and label counts must agree in both directions (more labels would read past the pixels)") {
  TempDir dir;
  for (const std::uint32_t labels : {4u, 6u}) {
    CAPTURE(labels);
    write_file(dir / "train-images-idx3-ubyte", images_bytes(5));
    write_file(dir / "train-labels-idx1-ubyte", labels_bytes(labels));
    const std::string message = data_error_of([&] { load_dataset(dir.path, Split::train); });
    CHECK(contains(message, "count mismatch"));
    CHECK(contains(message, "5 images"));
    CHECK(contains(message, std::to_string(labels) + " labels"));
  }
}

TEST_CASE("the in-memory entry points read exactly what the file readers read") {
  const std::string images = images_bytes(5);
  check_fixture_images(idx_images_from_bytes(as_bytes(images), "mem"));
  check_fixture_images(idx_images_from_bytes(as_bytes(vgg_test::gzip(images)), "mem.gz"));
  CHECK(idx_labels_from_bytes(as_bytes(labels_bytes(7)), "mem") == std::vector<std::uint8_t>{0, 1, 2, 3, 4, 5, 6});
  const std::string message =
      data_error_of([&] { idx_images_from_bytes(as_bytes(images.substr(0, 70)), "in-memory.idx"); });
  CHECK(contains(message, "'in-memory.idx' is truncated"));
  CHECK(contains(message, "found 70"));
}

TEST_CASE("a gzip bomb stops at the header's declared size, without inflating the rest") {
  // A valid 5-label file followed by 256 MiB of zeros inside the same gzip member (~260 KB stored).
  // The old reader inflated all of it before noticing; the stream stops 1 MiB past the declared 13.
  const std::string bomb = vgg_test::gzip_bomb(labels_bytes(5), std::uint64_t{256} << 20);
  CHECK(bomb.size() < 400'000);
  const auto start = std::chrono::steady_clock::now();
  const std::string message = data_error_of([&] { idx_labels_from_bytes(as_bytes(bomb), "bomb.gz"); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(contains(message, "'bomb.gz' holds more data than its header declares"));
  CHECK(contains(message, "expected exactly 13 bytes"));
  CHECK(contains(message, "reading stopped"));
  MESSAGE("rejected the 256 MiB bomb in " << seconds << " s");
  // The same construction, small enough to read in full, is a valid file: the bomb builder is sound.
  const std::uint64_t zeros = 3 * 1048576 + 17;
  std::string prefix = be32(0x00000801) + be32(std::uint32_t(5 + zeros));
  prefix += std::string("\x03\x00\x09\x01\x07", 5);
  const auto labels = idx_labels_from_bytes(as_bytes(vgg_test::gzip_bomb(prefix, zeros)), "small-bomb.gz");
  REQUIRE(labels.size() == 5 + zeros);
  CHECK(labels[2] == 9);
  CHECK(labels.back() == 0);
}

TEST_CASE("a few trailing bytes inside the gzip data are counted exactly") {
  const std::string message =
      data_error_of([&] { idx_images_from_bytes(as_bytes(vgg_test::gzip(images_bytes(5) + "abc")), "t.gz"); });
  CHECK(contains(message, "3 trailing bytes"));
  CHECK(contains(message, "expected exactly 76"));
  CHECK(contains(message, "found 79 after decompression"));
}

TEST_CASE("a header declaring more than the file can hold is refused before allocating") {
  // Raw: 60000 images of 28 x 28 declared, 16 bytes present.
  const std::string raw = be32(0x00000803) + be32(60000) + be32(28) + be32(28);
  const std::string raw_message = data_error_of([&] { idx_images_from_bytes(as_bytes(raw), "raw"); });
  CHECK(contains(raw_message, "truncated: expected 47040016 bytes"));
  CHECK(contains(raw_message, "found 16"));
  // gzip: 3 GB declared in a few dozen bytes, more than deflate can expand to.
  const std::string lying = vgg_test::gzip(be32(0x00000803) + be32(3000) + be32(1000) + be32(1000));
  const std::string gzip_message = data_error_of([&] { idx_images_from_bytes(as_bytes(lying), "lying.gz"); });
  CHECK(contains(gzip_message, "truncated or its header is corrupt"));
  CHECK(contains(gzip_message, "3000000016 bytes"));
  CHECK(contains(gzip_message, "decompresses to at most about"));
  // Beyond the reader's 4 GiB limit, whatever the file size.
  const std::string huge = be32(0x00000803) + be32(4000000000u) + be32(60000) + be32(60000);
  const std::string huge_message = data_error_of([&] { idx_images_from_bytes(as_bytes(huge), "huge"); });
  CHECK(contains(huge_message, "4000000000 x 60000 x 60000"));
  CHECK(contains(huge_message, "limit of 4294967296 bytes"));
}

TEST_CASE("highly compressible real data is not mistaken for a lying header") {
  // 20000 blank 28 x 28 images compress about 1000:1, close to deflate's maximum ratio.
  std::string blank = be32(0x00000803) + be32(20000) + be32(28) + be32(28);
  blank.append(std::size_t(20000) * 28 * 28, '\0');
  const std::string packed = vgg_test::gzip(blank);
  CHECK(blank.size() / packed.size() > 900);
  const IdxImages images = idx_images_from_bytes(as_bytes(packed), "blank.gz");
  CHECK(images.count == 20000);
  CHECK(images.pixels.size() == std::size_t(20000) * 28 * 28);
}

TEST_CASE("gzip: several members are one file; anything else after a member is rejected") {
  const std::string images = images_bytes(5);
  const std::string two_members = vgg_test::gzip(images.substr(0, 30)) + vgg_test::gzip(images.substr(30));
  check_fixture_images(idx_images_from_bytes(as_bytes(two_members), "two.gz"));

  const std::string member = vgg_test::gzip(images);
  const std::string message = data_error_of([&] { idx_images_from_bytes(as_bytes(member + "garbage"), "g.gz"); });
  CHECK(contains(message, "'g.gz' has trailing garbage after its gzip data"));
  CHECK(contains(message, "at byte " + std::to_string(member.size()) + " of " + std::to_string(member.size() + 7)));
  CHECK(contains(message, "found 0x67"));  // 'g'
  CHECK(contains(data_error_of([&] { idx_images_from_bytes(as_bytes(member + std::string(4, '\0')), "z.gz"); }),
                 "trailing garbage"));
  // A corrupted CRC-32 in the trailer is corruption, not silence.
  std::string bad_crc = member;
  bad_crc[bad_crc.size() - 6] ^= 0x55;
  CHECK(contains(data_error_of([&] { idx_images_from_bytes(as_bytes(bad_crc), "crc.gz"); }), "corrupt gzip"));
  // Cut inside the deflate data.
  CHECK(contains(data_error_of([&] { idx_images_from_bytes(as_bytes(member.substr(0, 20)), "cut.gz"); }),
                 "truncated gzip"));
}

TEST_CASE("a directory or FIFO where a data file belongs is called what it is") {
  TempDir dir;
  write_file(dir / "train-labels-idx1-ubyte", labels_bytes(5));
  fs::create_directory(dir / "train-images-idx3-ubyte");
  const std::string directory_message = data_error_of([&] { load_dataset(dir.path, Split::train); });
  CHECK(contains(directory_message, (dir / "train-images-idx3-ubyte").string()));
  CHECK(contains(directory_message, "is a directory, not a regular file"));
  CHECK_FALSE(contains(directory_message, "missing"));
  CHECK(contains(data_error_of([&] { read_idx_images(dir / "train-images-idx3-ubyte"); }), "is a directory"));

  fs::remove(dir / "train-images-idx3-ubyte");
  REQUIRE(::mkfifo((dir / "train-images-idx3-ubyte").c_str(), 0600) == 0);
  CHECK(contains(data_error_of([&] { load_dataset(dir.path, Split::train); }), "is a FIFO (named pipe)"));
  // Opening a FIFO for reading blocks until a writer comes: run it where a hang fails the test.
  const auto child = vgg_test::run_in_child(
      [&](const auto& report) {
        report(data_error_of([&] { read_idx_images(dir / "train-images-idx3-ubyte"); }));
        return 0;
      },
      10.0);
  CHECK_FALSE(child.timed_out);
  CHECK(contains(child.output, "is a FIFO (named pipe), not a regular file; expected an IDX file of images"));
}

TEST_CASE("unreadable paths report the OS reason; --data naming a file is not 'missing'") {
  const fs::path under_a_file = fixtures / "short.idx" / "train-images-idx3-ubyte";
  const std::string not_dir = data_error_of([&] { read_idx_images(under_a_file); });
  CHECK(contains(not_dir, under_a_file.string()));
  CHECK(contains(not_dir, "cannot be opened for reading: Not a directory"));

  const std::string data_is_file = data_error_of([&] { load_dataset(fixtures / "short.idx", Split::train); });
  CHECK(contains(data_is_file, "is a regular file, not a directory"));
  CHECK_FALSE(contains(data_is_file, "does not exist"));

  TempDir dir;
  fs::create_symlink(dir / "nowhere", dir / "train-images-idx3-ubyte");
  CHECK(contains(data_error_of([&] { load_dataset(dir.path, Split::train); }), "symbolic link to a missing file"));

  if (::geteuid() == 0) {
    MESSAGE("running as root, which reads any file: the permission-denied check is skipped");
    return;
  }
  write_file(dir / "locked.idx", images_bytes(5));
  fs::permissions(dir / "locked.idx", fs::perms::none);
  CHECK(contains(data_error_of([&] { read_idx_images(dir / "locked.idx"); }), "Permission denied"));
}
