#pragma once
// Reading IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.
//
// Format: a 4-byte magic 0x00 0x00 <type> <ndims>, then ndims big-endian uint32 extents, then
// the payload in row-major order. Only unsigned bytes (type 0x08) are used by (Fashion-)MNIST:
// images are 0x00000803 (n x rows x cols), labels 0x00000801 (n). Every check below exists
// because a truncated download or a mixed-up file otherwise turns into silent garbage training.

#include <zlib.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgg::data {

/// Thrown for every problem with data files; the message names the file and what was expected
/// versus what was found.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// n images of rows x cols unsigned bytes, stored image after image, row-major.
struct IdxImages {
  std::size_t count = 0;
  int rows = 0;
  int cols = 0;
  std::vector<std::uint8_t> pixels;  // count * rows * cols bytes

  std::size_t pixels_per_image() const { return std::size_t(rows) * std::size_t(cols); }

  /// requires: i < count.  ensures: the rows*cols bytes of image i.
  std::span<const std::uint8_t> image(std::size_t i) const {
    return {pixels.data() + i * pixels_per_image(), pixels_per_image()};
  }
};

/// Images with one label each; what load_dataset returns and what a Batcher consumes.
struct Dataset {
  IdxImages images;
  std::vector<std::uint8_t> labels;  // labels[i] in [0, num_classes)
  int num_classes = 10;

  std::size_t size() const { return labels.size(); }
};

enum class Split { train, test };

namespace detail {

inline constexpr std::uint32_t idx_images_magic = 0x00000803;
inline constexpr std::uint32_t idx_labels_magic = 0x00000801;

// Built with += rather than "'" + s + "'", which trips a GCC 12 -Wrestrict false positive.
inline std::string quoted(const std::filesystem::path& file) {
  std::string text = "'";
  text += file.string();
  text += '\'';
  return text;
}

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

inline std::uint32_t read_be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         std::uint32_t(p[3]);
}

inline std::vector<std::uint8_t> read_gzip_file(const std::filesystem::path& file) {
  gzFile gz = gzopen(file.string().c_str(), "rb");
  if (gz == nullptr) throw DataError("cannot open '" + file.string() + "' for reading");
  std::vector<std::uint8_t> bytes;
  std::array<std::uint8_t, 1 << 16> chunk{};
  for (;;) {
    const int got = gzread(gz, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (got < 0) break;  // reported through gzerror below
    if (got == 0) break;
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + got);
  }
  int errnum = Z_OK;
  const char* message = gzerror(gz, &errnum);
  // A truncated stream ends without error from gzread but sets Z_BUF_ERROR ("unexpected end of file").
  const bool failed = errnum != Z_OK && errnum != Z_STREAM_END;
  std::string reason = failed ? std::string(message) : std::string();
  // zlib prefixes its message with the path, which the text below already names.
  if (const std::string prefix = file.string() + ": "; reason.rfind(prefix, 0) == 0) reason.erase(0, prefix.size());
  gzclose(gz);
  if (failed)
    throw DataError(quoted(file) + " is a corrupt or truncated gzip file: " + reason +
                    " (after " + std::to_string(bytes.size()) + " decompressed bytes)");
  return bytes;
}

/// requires: nothing.  ensures: the file's bytes, gunzipped when it starts with the gzip magic
/// 1f 8b (detected by content, not by the file name); throws DataError when it cannot be read.
inline std::vector<std::uint8_t> read_maybe_gzipped(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw DataError("cannot open '" + file.string() + "' for reading");
  std::array<char, 2> head{};
  in.read(head.data(), 2);
  if (in.gcount() == 2 && static_cast<unsigned char>(head[0]) == 0x1f && static_cast<unsigned char>(head[1]) == 0x8b) {
    in.close();
    return read_gzip_file(file);
  }
  in.clear();
  in.seekg(0);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError("error while reading '" + file.string() + "'");
  return bytes;
}

/// Parses and checks an IDX header of ubyte data with the given magic; returns the extents.
/// `what` says in messages what the file should contain ("images", "labels").
inline std::vector<std::uint32_t> parse_idx_header(const std::vector<std::uint8_t>& bytes,
                                                   const std::filesystem::path& file,
                                                   std::uint32_t expected_magic, const char* what) {
  const std::string name = quoted(file);
  const unsigned expected_dims = expected_magic & 0xFFu;
  if (bytes.size() < 4)
    throw DataError(name + " is too short for an IDX file: expected at least 4 bytes of magic number, found " +
                    std::to_string(bytes.size()) + " bytes");
  const std::uint32_t magic = read_be32(bytes.data());
  if ((magic & 0xFFFFFF00u) != (expected_magic & 0xFFFFFF00u))
    throw DataError(name + " is not an IDX file of unsigned bytes: expected magic number " + hex32(expected_magic) +
                    " (" + what + "), found " + hex32(magic));
  const unsigned dims = magic & 0xFFu;
  if (dims != expected_dims)
    throw DataError(name + " has " + std::to_string(dims) + " dimension(s) (magic " + hex32(magic) + "), but " +
                    what + " need " + std::to_string(expected_dims) + " (magic " + hex32(expected_magic) + ")");
  const std::size_t header_bytes = 4 + 4 * std::size_t(dims);
  if (bytes.size() < header_bytes)
    throw DataError(name + " is truncated inside its header: expected at least " + std::to_string(header_bytes) +
                    " bytes, found " + std::to_string(bytes.size()));
  std::vector<std::uint32_t> extents(dims);
  // 64-bit product: 2^32 * 2^32 * 2^32 overflows, but no real extent comes near it, and we
  // compare against the bytes actually present rather than trusting the header to allocate.
  unsigned long long payload = 1;
  bool overflow = false;
  for (unsigned d = 0; d < dims; ++d) {
    extents[d] = read_be32(bytes.data() + 4 + 4 * d);
    if (extents[d] != 0 && payload > ~0ULL / extents[d]) overflow = true;
    payload *= extents[d];
  }
  const unsigned long long expected_total = header_bytes + payload;
  if (overflow || bytes.size() < expected_total)
    throw DataError(name + " is truncated: expected " + std::to_string(expected_total) + " bytes (" +
                    std::to_string(header_bytes) + " header + " + std::to_string(payload) + " payload), found " +
                    std::to_string(bytes.size()));
  if (bytes.size() > expected_total)
    throw DataError(name + " has " + std::to_string(bytes.size() - expected_total) +
                    " trailing bytes: expected exactly " + std::to_string(expected_total) + " bytes (" +
                    std::to_string(header_bytes) + " header + " + std::to_string(payload) + " payload), found " +
                    std::to_string(bytes.size()));
  return extents;
}

inline std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& base) {
  // The uncompressed file wins when both exist: it is what a user who gunzipped by hand meant.
  for (const auto& candidate : {dir / base, dir / (base + ".gz")})
    if (std::filesystem::is_regular_file(candidate)) return candidate;
  throw DataError("missing data file '" + (dir / base).string() + "' (or '" + base +
                  ".gz'); run scripts/fetch_data.sh " + dir.string() +
                  " to download Fashion-MNIST, or copy the official IDX files there (see docs/DATA.md)");
}

}  // namespace detail

/// requires: nothing (every problem is reported by exception).
/// ensures: the images of an IDX file with magic 0x00000803, raw or gzip; result.pixels.size() ==
/// count*rows*cols exactly; rows, cols > 0.  throws DataError naming the file and expected vs found
/// for: unreadable/corrupt file, wrong magic, other than 3 dimensions, short or over-long payload.
inline IdxImages read_idx_images(const std::filesystem::path& file) {
  std::vector<std::uint8_t> bytes = detail::read_maybe_gzipped(file);
  const auto extents = detail::parse_idx_header(bytes, file, detail::idx_images_magic, "images");
  if (extents[1] == 0 || extents[2] == 0)
    throw DataError(detail::quoted(file) + " has empty images: expected rows and cols > 0, found " +
                    std::to_string(extents[1]) + " x " + std::to_string(extents[2]));
  if (extents[1] > 65536 || extents[2] > 65536)
    throw DataError(detail::quoted(file) + " has implausible image size " + std::to_string(extents[1]) + " x " +
                    std::to_string(extents[2]) + " (expected at most 65536 x 65536)");
  IdxImages images;
  images.count = extents[0];
  images.rows = static_cast<int>(extents[1]);
  images.cols = static_cast<int>(extents[2]);
  bytes.erase(bytes.begin(), bytes.begin() + 16);
  images.pixels = std::move(bytes);
  return images;
}

/// requires: 1 <= num_classes <= 256.
/// ensures: the labels of an IDX file with magic 0x00000801, raw or gzip, each < num_classes.
/// throws DataError naming the file for: unreadable/corrupt file, wrong magic or dimensions,
/// short or over-long payload, and the first label out of range (its index and value).
inline std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& file, int num_classes = 10) {
  if (num_classes < 1 || num_classes > 256)
    throw std::invalid_argument("read_idx_labels: num_classes must be in 1..256, got " + std::to_string(num_classes));
  std::vector<std::uint8_t> bytes = detail::read_maybe_gzipped(file);
  detail::parse_idx_header(bytes, file, detail::idx_labels_magic, "labels");
  bytes.erase(bytes.begin(), bytes.begin() + 8);
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] >= num_classes)
      throw DataError(detail::quoted(file) + ": label " + std::to_string(i) + " is " + std::to_string(bytes[i]) +
                      ", expected a class in 0.." + std::to_string(num_classes - 1));
  return bytes;
}

/// requires: nothing.
/// ensures: the official-name IDX pair of `split` from `dir` (train-images-idx3-ubyte /
/// train-labels-idx1-ubyte or t10k-..., each with or without .gz; the uncompressed one wins if both
/// exist), with images.count == labels.size() > 0 and every label < num_classes.
/// throws DataError: when dir or a file is missing (the message says to run scripts/fetch_data.sh),
/// for any problem read_idx_images / read_idx_labels report, and on an image/label count mismatch.
inline Dataset load_dataset(const std::filesystem::path& dir, Split split, int num_classes = 10) {
  if (!std::filesystem::is_directory(dir))
    throw DataError("data directory '" + dir.string() + "' does not exist; run scripts/fetch_data.sh " +
                    dir.string() + " to download Fashion-MNIST, or put the official IDX files there (see docs/DATA.md)");
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const auto images_file = detail::find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_file = detail::find_idx_file(dir, prefix + "-labels-idx1-ubyte");
  Dataset data;
  data.num_classes = num_classes;
  data.images = read_idx_images(images_file);
  data.labels = read_idx_labels(labels_file, num_classes);
  if (data.images.count != data.labels.size())
    throw DataError("image/label count mismatch: '" + images_file.string() + "' has " +
                    std::to_string(data.images.count) + " images but '" + labels_file.string() + "' has " +
                    std::to_string(data.labels.size()) + " labels");
  if (data.labels.empty()) throw DataError(detail::quoted(images_file) + " contains no images");
  return data;
}

}  // namespace vgg::data
