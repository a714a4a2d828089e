#pragma once
// Reading IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.
//
// Format: a 4-byte magic 0x00 0x00 <type> <ndims>, then ndims big-endian uint32 extents, then
// the payload in row-major order. Only unsigned bytes (type 0x08) are used by (Fashion-)MNIST:
// images are 0x00000803 (n x rows x cols), labels 0x00000801 (n). Every check below exists
// because a truncated download or a mixed-up file otherwise turns into silent garbage training.
//
// Files are untrusted: the header is checked against limits and against the file's real size
// before anything is allocated, and gzip is inflated as a stream that stops at the size the header
// declares, so a small hostile file can never cost more memory than its header honestly implies.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "vgg/io/posix_file.hpp"

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

// The largest payload the reader accepts (4 GiB; Fashion-MNIST's largest file holds 47 MB). A
// header is checked against it, and against the file's real size, before anything is allocated.
inline constexpr std::uint64_t max_idx_payload_bytes = std::uint64_t{1} << 32;
// Deflate cannot expand data by more than about 1032:1 (a 258-byte match in ~2 bits), so a gzip
// file of C bytes whose header declares more than this times C (plus slack for tiny files) is
// truncated or lying, and is refused before a byte is inflated.
inline constexpr std::uint64_t max_deflate_ratio = 1032;
inline constexpr std::uint64_t deflate_ratio_slack_bytes = 1024;
// Data beyond the declared size is counted up to this much (for an exact message), then reading
// stops: a gzip bomb costs at most this much extra inflating, never gigabytes.
inline constexpr std::uint64_t max_trailing_bytes_counted = std::uint64_t{1} << 20;
inline constexpr std::size_t io_chunk_bytes = std::size_t{1} << 16;

// Built with += rather than "'" + s + "'", which trips a GCC 12 -Wrestrict false positive.
inline std::string in_quotes(const std::string& name) {
  std::string text = "'";
  text += name;
  text += '\'';
  return text;
}
inline std::string in_quotes(const std::filesystem::path& file) { return in_quotes(file.string()); }

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

inline std::uint32_t read_be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         std::uint32_t(p[3]);
}

/// The stored bytes of an IDX file (raw or gzip), from an open regular file or from memory.
class ByteInput {
 public:
  /// requires: `memory` outlives this object.
  ByteInput(std::span<const std::uint8_t> memory, std::string name)
      : name_(std::move(name)), memory_(memory), size_(memory.size()) {}

  /// requires: nothing.  ensures: `file` is open for reading; throws DataError naming the file,
  /// what it is (a directory, a FIFO, ...) or the OS reason it cannot be opened.
  ByteInput(const std::filesystem::path& file, const char* what) : name_(file.string()) {
    io::detail::OpenedFile opened = io::detail::open_regular_file(file);
    if (!opened.problem.empty())
      throw DataError(in_quotes(name_) + " " + opened.problem + "; expected an IDX file of " + what);
    fd_ = std::move(opened.fd);
    size_ = opened.size;
  }

  const std::string& name() const { return name_; }
  /// ensures: the stored size (what fstat reported, or the span's size).
  std::uint64_t size() const { return size_; }

  /// ensures: up to n bytes in dst, 0 only at the end; throws DataError (with the OS reason) when
  /// the file cannot be read.
  std::size_t read_some(std::uint8_t* dst, std::size_t n) {
    if (fd_.get() < 0) {
      const std::size_t take = std::min(n, memory_.size() - memory_position_);
      if (take > 0) std::memcpy(dst, memory_.data() + memory_position_, take);
      memory_position_ += take;
      return take;
    }
    for (;;) {
      const ssize_t got = ::read(fd_.get(), dst, std::min<std::size_t>(n, std::size_t{1} << 30));
      if (got >= 0) return static_cast<std::size_t>(got);
      if (errno != EINTR)
        throw DataError(in_quotes(name_) + " cannot be read: " + std::strerror(errno));
    }
  }

 private:
  std::string name_;
  io::detail::FileDescriptor fd_;
  std::span<const std::uint8_t> memory_;
  std::size_t memory_position_ = 0;
  std::uint64_t size_ = 0;
};

/// The content of an IDX file: the stored bytes, or their inflation when they start with the gzip
/// magic 1f 8b (detected by content, not by the file name). Inflates on demand, so a caller that
/// stops reading stops the decompression: nothing is read beyond what is asked for. Not movable
/// (zlib's stream state points back at the z_stream).
class IdxByteStream {
 public:
  explicit IdxByteStream(ByteInput input) : input_(std::move(input)), buffer_(io_chunk_bytes) {
    buffer_size_ = fill(buffer_.data(), buffer_.size());
    gzip_ = buffer_size_ >= 2 && buffer_[0] == 0x1f && buffer_[1] == 0x8b;
    if (gzip_) {
      // 16 + MAX_WBITS: gzip wrapper only (header and CRC-32/size trailer checked by zlib).
      if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK)
        throw DataError(in_quotes(name()) + ": cannot start gzip decompression (out of memory?)");
      zs_.next_in = buffer_.data();
      zs_.avail_in = static_cast<uInt>(buffer_size_);
    }
  }
  IdxByteStream(const IdxByteStream&) = delete;
  IdxByteStream& operator=(const IdxByteStream&) = delete;
  ~IdxByteStream() {
    if (gzip_) inflateEnd(&zs_);
  }

  const std::string& name() const { return input_.name(); }
  bool gzip() const { return gzip_; }
  /// ensures: the stored (compressed, for gzip) size.
  std::uint64_t stored_size() const { return input_.size(); }
  /// ensures: the bytes delivered by read() so far.
  std::uint64_t delivered() const { return delivered_; }

  /// ensures: dst[0..n) filled, or fewer bytes (the count returned) when the content ends first.
  /// throws DataError naming the file for a corrupt or truncated gzip stream, bytes after the
  /// last gzip member that are not another member, and read errors.
  std::size_t read(std::uint8_t* dst, std::size_t n) {
    const std::size_t got = gzip_ ? inflate_into(dst, n) : copy_into(dst, n);
    delivered_ += got;
    return got;
  }

 private:
  std::size_t fill(std::uint8_t* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const std::size_t step = input_.read_some(dst + got, n - got);
      if (step == 0) break;
      got += step;
    }
    stored_read_ += got;
    return got;
  }

  std::size_t copy_into(std::uint8_t* dst, std::size_t n) {
    const std::size_t buffered = std::min(n, buffer_size_ - buffer_position_);
    if (buffered > 0) std::memcpy(dst, buffer_.data() + buffer_position_, buffered);
    buffer_position_ += buffered;
    return buffered + fill(dst + buffered, n - buffered);
  }

  std::size_t inflate_into(std::uint8_t* dst, std::size_t n) {
    std::size_t produced = 0;
    while (produced < n && !ended_) {
      if (zs_.avail_in == 0) {
        const std::size_t got = fill(buffer_.data(), buffer_.size());
        if (got == 0) {
          if (member_complete_) {
            ended_ = true;
            break;
          }
          throw DataError(in_quotes(name()) +
                          " is a truncated gzip file: the compressed data ends inside a gzip member (after " +
                          std::to_string(delivered_ + produced) + " decompressed bytes)");
        }
        zs_.next_in = buffer_.data();
        zs_.avail_in = static_cast<uInt>(got);
      }
      if (member_complete_) {
        // RFC 1952 allows several members one after another (gzip reads them as one file);
        // anything else after a member is garbage: a botched download or an appended file.
        if (zs_.next_in[0] != 0x1f) {
          char found[8];
          std::snprintf(found, sizeof found, "0x%02X", unsigned(zs_.next_in[0]));
          throw DataError(in_quotes(name()) + " has trailing garbage after its gzip data at byte " +
                          std::to_string(stored_read_ - zs_.avail_in) + " of " + std::to_string(stored_size()) +
                          ": expected the end of the file or another gzip member (0x1F 0x8B), found " + found);
        }
        inflateReset(&zs_);
        member_complete_ = false;
      }
      const std::size_t want = std::min<std::size_t>(n - produced, std::size_t{1} << 30);
      zs_.next_out = dst + produced;
      zs_.avail_out = static_cast<uInt>(want);
      const int status = inflate(&zs_, Z_NO_FLUSH);
      produced += want - zs_.avail_out;
      if (status == Z_STREAM_END) {
        member_complete_ = true;
      } else if (status != Z_OK && !(status == Z_BUF_ERROR && zs_.avail_in == 0)) {
        throw DataError(in_quotes(name()) + " is a corrupt gzip file: " + (zs_.msg ? zs_.msg : "inflate failed") +
                        " (after " + std::to_string(delivered_ + produced) + " decompressed bytes)");
      }
    }
    return produced;
  }

  ByteInput input_;
  std::vector<std::uint8_t> buffer_;  // stored bytes not yet consumed
  std::size_t buffer_size_ = 0;
  std::size_t buffer_position_ = 0;   // raw files: how much of buffer_ was handed out
  std::uint64_t stored_read_ = 0;     // stored bytes read from input_
  std::uint64_t delivered_ = 0;
  bool gzip_ = false;
  bool member_complete_ = false;      // the last gzip member ended; only another may follow
  bool ended_ = false;
  z_stream zs_{};
};

/// An IDX header: the extents and the byte counts they imply.
struct IdxHeader {
  std::vector<std::uint32_t> extents;
  std::uint64_t header_bytes = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t total_bytes() const { return header_bytes + payload_bytes; }
};

/// Reads an IDX file in two steps, header then payload, so the header can be checked (here and
/// by the caller) before the payload is allocated.
class IdxReader {
 public:
  explicit IdxReader(ByteInput input) : stream_(std::move(input)) {}

  const std::string& name() const { return stream_.name(); }

  /// requires: called once, first.
  /// ensures: the header of an IDX file of ubyte data with `expected_magic`, whose payload is at
  /// most max_idx_payload_bytes and fits the stored size (exactly, for a raw file; within
  /// deflate's maximum ratio, for gzip). throws DataError naming the file, expected and found.
  /// `what` says in messages what the file should contain ("images", "labels").
  const IdxHeader& read_header(std::uint32_t expected_magic, const char* what) {
    const std::string file = in_quotes(name());
    const std::string after = stream_.gzip() ? " after decompression" : "";
    const unsigned expected_dims = expected_magic & 0xFFu;
    std::uint8_t head[4 + 4 * 255];
    const std::size_t got_magic = stream_.read(head, 4);
    if (got_magic < 4)
      throw DataError(file + " is too short for an IDX file: expected at least 4 bytes of magic number, found " +
                      std::to_string(got_magic) + " bytes" + after);
    const std::uint32_t magic = read_be32(head);
    if ((magic & 0xFFFFFF00u) != (expected_magic & 0xFFFFFF00u))
      throw DataError(file + " is not an IDX file of unsigned bytes: expected magic number " + hex32(expected_magic) +
                      " (" + what + "), found " + hex32(magic));
    const unsigned dims = magic & 0xFFu;
    if (dims != expected_dims)
      throw DataError(file + " has " + std::to_string(dims) + " dimension(s) (magic " + hex32(magic) + "), but " +
                      what + " need " + std::to_string(expected_dims) + " (magic " + hex32(expected_magic) + ")");
    header_.header_bytes = 4 + 4 * std::uint64_t(dims);
    const std::size_t got_extents = stream_.read(head + 4, 4 * std::size_t(dims));
    if (got_extents < 4 * std::size_t(dims))
      throw DataError(file + " is truncated inside its header: expected at least " +
                      std::to_string(header_.header_bytes) + " bytes, found " + std::to_string(4 + got_extents) +
                      after);
    header_.extents.resize(dims);
    std::uint64_t payload = 1;
    bool over_limit = false;
    for (unsigned d = 0; d < dims; ++d) {
      header_.extents[d] = read_be32(head + 4 + 4 * d);
      // Saturating product: 3 extents of up to 2^32 can overflow 64 bits.
      if (header_.extents[d] != 0 && payload > max_idx_payload_bytes / header_.extents[d]) over_limit = true;
      payload = over_limit ? max_idx_payload_bytes + 1 : payload * header_.extents[d];
    }
    header_.payload_bytes = payload;
    std::string extents_text;
    for (unsigned d = 0; d < dims; ++d) extents_text += (d ? " x " : "") + std::to_string(header_.extents[d]);
    if (over_limit || payload > max_idx_payload_bytes)
      throw DataError(file + " declares " + what + " of " + extents_text + " bytes, more than the reader's limit of " +
                      std::to_string(max_idx_payload_bytes) + " bytes (a corrupt header?)");
    const std::uint64_t total = header_.total_bytes();
    const std::string expected_text = std::to_string(total) + " bytes (" + std::to_string(header_.header_bytes) +
                                      " header + " + std::to_string(payload) + " payload)";
    if (!stream_.gzip()) {
      if (stream_.stored_size() < total)
        throw DataError(file + " is truncated: expected " + expected_text + ", found " +
                        std::to_string(stream_.stored_size()));
      if (stream_.stored_size() > total)
        throw DataError(file + " has " + std::to_string(stream_.stored_size() - total) +
                        " trailing bytes: expected exactly " + expected_text + ", found " +
                        std::to_string(stream_.stored_size()));
    } else if (const std::uint64_t most = std::min(stream_.stored_size(), max_idx_payload_bytes) * max_deflate_ratio +
                                          deflate_ratio_slack_bytes;
               total > most) {
      throw DataError(file + " is truncated or its header is corrupt: the header declares " + expected_text +
                      ", but a gzip file of " + std::to_string(stream_.stored_size()) +
                      " bytes decompresses to at most about " + std::to_string(most));
    }
    return header_;
  }

  /// requires: read_header succeeded.
  /// ensures: exactly the declared payload, and the content ends right after it (a gzip stream is
  /// inflated only up to the declared size plus at most max_trailing_bytes_counted).
  /// throws DataError naming the file for a short or over-long content and gzip errors.
  std::vector<std::uint8_t> read_payload() {
    const std::string file = in_quotes(name());
    const std::uint64_t declared = header_.payload_bytes;
    const std::string expected_text = std::to_string(header_.total_bytes()) + " bytes (" +
                                      std::to_string(header_.header_bytes) + " header + " +
                                      std::to_string(declared) + " payload)";
    std::vector<std::uint8_t> payload;
    // A raw file's size already matched the header; a gzip stream may still be lying, so its buffer
    // grows (doubling, never past the declared size) only as data actually arrives.
    if (!stream_.gzip()) payload.reserve(static_cast<std::size_t>(declared));
    while (payload.size() < declared) {
      const std::size_t have = payload.size();
      const std::size_t next = static_cast<std::size_t>(
          std::min<std::uint64_t>(declared, std::max<std::uint64_t>(2 * std::uint64_t(have), io_chunk_bytes)));
      if (payload.capacity() < next) payload.reserve(next);
      payload.resize(next);
      const std::size_t got = stream_.read(payload.data() + have, next - have);
      if (got < next - have)
        throw DataError(file + " is truncated: expected " + expected_text + ", found " +
                        std::to_string(header_.header_bytes + have + got) +
                        (stream_.gzip() ? " after decompression" : ""));
    }
    std::uint64_t trailing = 0;
    std::array<std::uint8_t, 4096> scratch{};
    for (;;) {
      const std::size_t got = stream_.read(scratch.data(), scratch.size());
      trailing += got;
      if (got < scratch.size()) break;
      if (trailing > max_trailing_bytes_counted)
        throw DataError(file + " holds more data than its header declares: expected exactly " + expected_text +
                        ", found more than " + std::to_string(header_.total_bytes() + max_trailing_bytes_counted) +
                        "; reading stopped there (a corrupt header, or a gzip bomb)");
    }
    if (trailing > 0)
      throw DataError(file + " has " + std::to_string(trailing) + " trailing bytes: expected exactly " + expected_text +
                      ", found " + std::to_string(header_.total_bytes() + trailing) +
                      (stream_.gzip() ? " after decompression" : ""));
    return payload;
  }

 private:
  IdxByteStream stream_;
  IdxHeader header_;
};

/// ensures: rows and cols of an images header are usable; throws DataError otherwise.
inline void check_image_extents(const IdxHeader& header, const std::string& name) {
  const auto rows = header.extents[1], cols = header.extents[2];
  if (rows == 0 || cols == 0)
    throw DataError(in_quotes(name) + " has empty images: expected rows and cols > 0, found " + std::to_string(rows) +
                    " x " + std::to_string(cols));
  if (rows > 65536 || cols > 65536)
    throw DataError(in_quotes(name) + " has implausible image size " + std::to_string(rows) + " x " +
                    std::to_string(cols) + " (expected at most 65536 x 65536)");
}

inline IdxImages images_from(IdxReader& reader, const IdxHeader& header) {
  IdxImages images;
  images.count = header.extents[0];
  images.rows = static_cast<int>(header.extents[1]);
  images.cols = static_cast<int>(header.extents[2]);
  images.pixels = reader.read_payload();
  return images;
}

inline std::vector<std::uint8_t> labels_from(IdxReader& reader, int num_classes) {
  std::vector<std::uint8_t> labels = reader.read_payload();
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= num_classes)
      throw DataError(in_quotes(reader.name()) + ": label " + std::to_string(i) + " is " + std::to_string(labels[i]) +
                      ", expected a class in 0.." + std::to_string(num_classes - 1));
  return labels;
}

inline void check_num_classes(int num_classes) {
  if (num_classes < 1 || num_classes > 256)
    throw std::invalid_argument("read_idx_labels: num_classes must be in 1..256, got " + std::to_string(num_classes));
}

inline IdxImages read_images(ByteInput input) {
  IdxReader reader(std::move(input));
  const IdxHeader& header = reader.read_header(idx_images_magic, "images");
  check_image_extents(header, reader.name());
  return images_from(reader, header);
}

inline std::vector<std::uint8_t> read_labels(ByteInput input, int num_classes) {
  check_num_classes(num_classes);
  IdxReader reader(std::move(input));
  reader.read_header(idx_labels_magic, "labels");
  return labels_from(reader, num_classes);
}

/// ensures: the file to read for `base` in `dir`: `base` when it exists, else `base`.gz (the
/// uncompressed file wins when both exist: it is what a user who gunzipped by hand meant).
/// throws DataError when neither exists (saying how to get the data), or when the first that
/// exists is not a regular file (saying what it is) or cannot be examined (the OS reason).
inline std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& base) {
  for (const auto& candidate : {dir / base, dir / (base + ".gz")}) {
    struct stat status {};
    if (::stat(candidate.c_str(), &status) == 0) {
      if (S_ISREG(status.st_mode)) return candidate;
      throw DataError(in_quotes(candidate) + " is " + io::detail::file_type_name(status.st_mode) +
                      ", not a regular file; expected the IDX file " + base + " (raw or .gz)");
    }
    const int error = errno;
    struct stat link {};
    if (error == ENOENT && ::lstat(candidate.c_str(), &link) == 0)
      throw DataError(in_quotes(candidate) + " is a symbolic link to a missing file; expected the IDX file " + base);
    if (error != ENOENT)
      throw DataError(in_quotes(candidate) + " cannot be examined: " + std::strerror(error));
  }
  throw DataError("missing data file '" + (dir / base).string() + "' (or '" + base +
                  ".gz'); run scripts/fetch_data.sh " + dir.string() +
                  " to download Fashion-MNIST, or copy the official IDX files there (see docs/DATA.md)");
}

}  // namespace detail

/// requires: nothing (every problem is reported by exception).
/// ensures: the images of an IDX file with magic 0x00000803, raw or gzip; result.pixels.size() ==
/// count*rows*cols exactly; rows, cols > 0.  throws DataError naming the file and expected vs found
/// for: a path that is not a readable regular file (saying what it is, or the OS reason), a
/// corrupt or truncated gzip stream or garbage after it, wrong magic, other than 3 dimensions,
/// a payload over detail::max_idx_payload_bytes, short or over-long content. Memory: the header is
/// checked against the file's size before the payload is allocated, and a gzip stream is inflated
/// only up to the declared size (plus at most 1 MiB to count trailing bytes).
inline IdxImages read_idx_images(const std::filesystem::path& file) {
  return detail::read_images(detail::ByteInput(file, "images"));
}

/// requires: nothing.  ensures: read_idx_images of a file holding `bytes` (raw or gzip); `name`
/// stands for the file in messages. For fuzzing and for data that is already in memory.
inline IdxImages idx_images_from_bytes(std::span<const std::uint8_t> bytes, const std::string& name) {
  return detail::read_images(detail::ByteInput(bytes, name));
}

/// requires: 1 <= num_classes <= 256 (std::invalid_argument otherwise).
/// ensures: the labels of an IDX file with magic 0x00000801, raw or gzip, each < num_classes.
/// throws DataError naming the file for what read_idx_images reports (except the image checks),
/// and for the first label out of range (its index and value).
inline std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& file, int num_classes = 10) {
  detail::check_num_classes(num_classes);
  return detail::read_labels(detail::ByteInput(file, "labels"), num_classes);
}

/// requires: 1 <= num_classes <= 256.  ensures: read_idx_labels of a file holding `bytes`.
inline std::vector<std::uint8_t> idx_labels_from_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                                                       int num_classes = 10) {
  return detail::read_labels(detail::ByteInput(bytes, name), num_classes);
}

/// requires: nothing.
/// ensures: the official-name IDX pair of `split` from `dir` (train-images-idx3-ubyte /
/// train-labels-idx1-ubyte or t10k-..., each with or without .gz; the uncompressed one wins if both
/// exist), with images.count == labels.size() > 0 and every label < num_classes.
/// throws DataError: when dir or a file is missing (the message says to run scripts/fetch_data.sh),
/// when dir or a file is something else (a file where the directory belongs, a directory or FIFO
/// where a data file belongs: the message says which), for any problem read_idx_images /
/// read_idx_labels report, and on an image/label count mismatch (found from the two headers, before
/// either payload is read).
inline Dataset load_dataset(const std::filesystem::path& dir, Split split, int num_classes = 10) {
  detail::check_num_classes(num_classes);
  struct stat status {};
  if (::stat(dir.c_str(), &status) != 0) {
    const int error = errno;
    if (error != ENOENT)
      throw DataError("data directory " + detail::in_quotes(dir) + " cannot be examined: " + std::strerror(error));
    throw DataError("data directory '" + dir.string() + "' does not exist; run scripts/fetch_data.sh " +
                    dir.string() +
                    " to download Fashion-MNIST, or put the official IDX files there (see docs/DATA.md)");
  }
  if (!S_ISDIR(status.st_mode))
    throw DataError("data directory " + detail::in_quotes(dir) + " is " + io::detail::file_type_name(status.st_mode) +
                    ", not a directory; expected the directory holding the IDX files (see docs/DATA.md)");
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const auto images_file = detail::find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_file = detail::find_idx_file(dir, prefix + "-labels-idx1-ubyte");
  detail::IdxReader images_reader(detail::ByteInput(images_file, "images"));
  detail::IdxReader labels_reader(detail::ByteInput(labels_file, "labels"));
  const detail::IdxHeader& images_header = images_reader.read_header(detail::idx_images_magic, "images");
  detail::check_image_extents(images_header, images_reader.name());
  const detail::IdxHeader& labels_header = labels_reader.read_header(detail::idx_labels_magic, "labels");
  // Both directions matter: more labels than images would make image(i) read past the pixels.
  if (images_header.extents[0] != labels_header.extents[0])
    throw DataError("image/label count mismatch: '" + images_file.string() + "' has " +
                    std::to_string(images_header.extents[0]) + " images but '" + labels_file.string() + "' has " +
                    std::to_string(labels_header.extents[0]) + " labels");
  if (images_header.extents[0] == 0) throw DataError(detail::in_quotes(images_file) + " contains no images");
  Dataset data;
  data.num_classes = num_classes;
  data.images = detail::images_from(images_reader, images_header);
  data.labels = detail::labels_from(labels_reader, num_classes);
  return data;
}

}  // namespace vgg::data
