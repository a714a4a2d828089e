// Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
//
//   [8 bytes: little-endian uint64 N][N bytes: UTF-8 JSON header, space padded][raw data]
//
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} with
// offsets relative to the first byte after the header, plus an optional "__metadata__"
// object of string -> string.  Written from the format description; see docs/CHECKPOINTS.md.
//
// Everything read from a file is untrusted: every size is checked (with overflow-safe
// arithmetic) before it is used, and every violation is a vgg::io::CheckpointError whose
// message names the file, the tensor and what was expected versus found.
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <ranges>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "vgg/io/posix_file.hpp"

namespace vgg::io {

static_assert(std::endian::native == std::endian::little,
              "vgg::io::safetensors copies tensor bytes verbatim, and safetensors data is "
              "little-endian, so this code only supports little-endian hosts.");

// Any problem with the contents of a checkpoint file or with how it binds to a network.
class CheckpointError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The element types of the safetensors format.  Only byte-copyable ones can be read or
// written through read<T>/tensor_record; the rest (F16, BF16, FP8, BOOL) can still be listed
// and inspected, so a PyTorch file with such tensors is diagnosable rather than "corrupt".
enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

// ensures: the format's spelling of `dtype` ("F32", ...).
constexpr std::string_view dtype_name(Dtype dtype) noexcept {
    switch (dtype) {
        case Dtype::BOOL: return "BOOL";
        case Dtype::U8: return "U8";
        case Dtype::I8: return "I8";
        case Dtype::F8_E5M2: return "F8_E5M2";
        case Dtype::F8_E4M3: return "F8_E4M3";
        case Dtype::I16: return "I16";
        case Dtype::U16: return "U16";
        case Dtype::F16: return "F16";
        case Dtype::BF16: return "BF16";
        case Dtype::I32: return "I32";
        case Dtype::U32: return "U32";
        case Dtype::F32: return "F32";
        case Dtype::F64: return "F64";
        case Dtype::I64: return "I64";
        case Dtype::U64: return "U64";
    }
    return "?";
}

// ensures: bytes per element of `dtype` (1, 2, 4 or 8).
constexpr std::size_t dtype_size(Dtype dtype) noexcept {
    switch (dtype) {
        case Dtype::BOOL:
        case Dtype::U8:
        case Dtype::I8:
        case Dtype::F8_E5M2:
        case Dtype::F8_E4M3: return 1;
        case Dtype::I16:
        case Dtype::U16:
        case Dtype::F16:
        case Dtype::BF16: return 2;
        case Dtype::I32:
        case Dtype::U32:
        case Dtype::F32: return 4;
        case Dtype::F64:
        case Dtype::I64:
        case Dtype::U64: return 8;
    }
    return 1;
}

// ensures: the dtype spelled `name`, or nullopt when the format has no such dtype.
inline std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
    for (int i = 0; i <= static_cast<int>(Dtype::U64); ++i) {
        if (dtype_name(static_cast<Dtype>(i)) == name) return static_cast<Dtype>(i);
    }
    return std::nullopt;
}

// C++ element types whose bytes are exactly one safetensors element.
template <class T>
concept SafetensorsElement =
    std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, std::int8_t> ||
    std::same_as<T, std::uint8_t> || std::same_as<T, std::int16_t> || std::same_as<T, std::uint16_t> ||
    std::same_as<T, std::int32_t> || std::same_as<T, std::uint32_t> || std::same_as<T, std::int64_t> ||
    std::same_as<T, std::uint64_t>;

// ensures: the dtype stored for elements of type T.
template <SafetensorsElement T>
constexpr Dtype dtype_of() noexcept {
    static_assert(!std::same_as<T, float> || std::numeric_limits<float>::is_iec559, "F32 must be IEEE 754");
    if constexpr (std::same_as<T, float>) return Dtype::F32;
    else if constexpr (std::same_as<T, double>) return Dtype::F64;
    else if constexpr (std::same_as<T, std::int8_t>) return Dtype::I8;
    else if constexpr (std::same_as<T, std::uint8_t>) return Dtype::U8;
    else if constexpr (std::same_as<T, std::int16_t>) return Dtype::I16;
    else if constexpr (std::same_as<T, std::uint16_t>) return Dtype::U16;
    else if constexpr (std::same_as<T, std::int32_t>) return Dtype::I32;
    else if constexpr (std::same_as<T, std::uint32_t>) return Dtype::U32;
    else if constexpr (std::same_as<T, std::int64_t>) return Dtype::I64;
    else return Dtype::U64;
}

// ensures: "[64,3,3,3]" ("[]" for a scalar); used in every shape message.
template <class Int>
std::string shape_to_string(std::span<const Int> shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i != 0) out += ',';
        out += std::to_string(shape[i]);
    }
    return out + ']';
}
inline std::string shape_to_string(const std::vector<std::int64_t>& shape) {
    return shape_to_string(std::span<const std::int64_t>(shape));
}

namespace detail {

// The reference reader refuses larger headers; so do we, before allocating anything.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;
// Our schema nests three levels (header > entry > shape); anything deeper is hostile.
inline constexpr int max_json_depth = 4;
// Keys and values (containers included) a header may hold. A parsed header costs ~170 bytes per
// item (the JSON tree plus the duplicate-key sets), so 100 MB of tiny keys would cost 1.5 GB;
// this caps the tree near 50 MB. A tensor takes ~10 items: room for ~30,000 tensors, where the
// largest single-file models have a few thousand.
inline constexpr std::size_t max_header_json_items = 300'000;

inline std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

[[noreturn]] inline void fail(const std::filesystem::path& path, std::string_view what) {
    throw CheckpointError("vgg::io: checkpoint " + quoted(path) + ": " + std::string(what));
}
[[noreturn]] inline void fail_tensor(const std::filesystem::path& path, std::string_view tensor,
                                     std::string_view what) {
    fail(path, "tensor '" + std::string(tensor) + "': " + std::string(what));
}
[[noreturn]] inline void fail_os(const std::filesystem::path& path, std::string_view action, int error) {
    throw CheckpointError("vgg::io: cannot " + std::string(action) + " " + quoted(path) + ": " +
                          std::system_category().message(error));
}

// ensures: a*b, or nullopt when it does not fit in 64 bits (sizes come from untrusted files).
inline std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept {
    std::uint64_t product = 0;
    if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
    return product;
}

// ensures: number of elements of `shape`, or nullopt on a negative dim or overflow.
inline std::optional<std::uint64_t> element_count(std::span<const std::int64_t> shape) noexcept {
    std::uint64_t count = 1;
    for (std::int64_t dim : shape) {
        if (dim < 0) return std::nullopt;
        auto next = checked_mul(count, static_cast<std::uint64_t>(dim));
        if (!next) return std::nullopt;
        count = *next;
    }
    return count;
}

inline std::string json_type(const nlohmann::json& value) { return value.type_name(); }

// requires: fd open for reading.  ensures: exactly `size` bytes at `offset` are in `dst`,
// else CheckpointError (a short read means the file shrank after it was validated).
inline void read_exactly(int fd, const std::filesystem::path& path, std::uint64_t offset, void* dst,
                         std::uint64_t size) {
    auto* out = static_cast<unsigned char*>(dst);
    while (size > 0) {
        // Linux transfers at most ~2 GiB per call; ask for no more than that.
        const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(size, 1u << 30));
        const ssize_t got = ::pread(fd, out, chunk, static_cast<off_t>(offset));
        if (got < 0) {
            if (errno == EINTR) continue;
            fail_os(path, "read", errno);
        }
        if (got == 0) fail(path, "file ended while reading (was it truncated after it was opened?)");
        out += got;
        offset += static_cast<std::uint64_t>(got);
        size -= static_cast<std::uint64_t>(got);
    }
}

// requires: fd open for writing.  ensures: all `size` bytes written, else CheckpointError.
inline void write_exactly(int fd, const std::filesystem::path& path, const void* src, std::size_t size) {
    const auto* in = static_cast<const unsigned char*>(src);
    while (size > 0) {
        const std::size_t chunk = std::min<std::size_t>(size, std::size_t{1} << 30);
        const ssize_t put = ::write(fd, in, chunk);
        if (put < 0) {
            if (errno == EINTR) continue;
            fail_os(path, "write", errno);
        }
        in += put;
        size -= static_cast<std::size_t>(put);
    }
}

// Rejects duplicate keys (nlohmann would silently keep the last), deep nesting and too many
// items (no legitimate header needs them, and they would only cost memory) while the header is
// parsed, before the tree grows.
struct HeaderParseGuard {
    std::vector<std::set<std::string>> open_objects;
    std::optional<std::string> duplicate_key;
    bool too_deep = false;
    bool too_many_items = false;
    std::size_t items = 0;

    struct Abort {};

    bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        using Event = nlohmann::json::parse_event_t;
        if (event != Event::object_end && event != Event::array_end && ++items > max_header_json_items) {
            too_many_items = true;
            throw Abort{};
        }
        switch (event) {
            case Event::object_start:
            case Event::array_start:
                if (depth >= max_json_depth) {
                    too_deep = true;
                    throw Abort{};
                }
                if (event == Event::object_start) open_objects.emplace_back();
                break;
            case Event::object_end:
                if (!open_objects.empty()) open_objects.pop_back();
                break;
            case Event::key:
                if (!open_objects.empty() && parsed.is_string() &&
                    !open_objects.back().insert(parsed.get<std::string>()).second) {
                    duplicate_key = parsed.get<std::string>();
                    throw Abort{};
                }
                break;
            default: break;
        }
        return true;
    }
};

// ensures: value as an unsigned integer, or nullopt when it is not a non-negative JSON integer.
inline std::optional<std::uint64_t> json_non_negative_integer(const nlohmann::json& value) {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    if (value.is_number_integer()) {
        const auto v = value.get<std::int64_t>();
        if (v >= 0) return static_cast<std::uint64_t>(v);
    }
    return std::nullopt;
}

// ensures: a short rendering of an untrusted JSON value for an error message.
inline std::string json_excerpt(const nlohmann::json& value) {
    std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text;
}

}  // namespace detail

// Where a tensor lives in a file and what it is.
struct TensorInfo {
    Dtype dtype = Dtype::F32;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0;  // offsets relative to the data buffer after the header
    std::uint64_t end = 0;

    std::uint64_t byte_size() const noexcept { return end - begin; }
    // ensures: number of elements (1 for a scalar, 0 for a zero-size tensor).
    std::uint64_t element_count() const noexcept { return byte_size() / dtype_size(dtype); }
};

// A validated, open safetensors file.  Tensor bytes are read on demand straight into the
// caller's buffers (no second copy of a multi-hundred-MB checkpoint), through a descriptor
// held open, so a save that atomically replaces the file meanwhile does not affect us.
// Reads are const and thread-safe (pread).
class SafetensorsFile {
public:
    SafetensorsFile(SafetensorsFile&&) noexcept = default;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

    // ensures: the path it was opened from.
    const std::filesystem::path& path() const noexcept { return path_; }
    // ensures: the "__metadata__" entries (empty when the file has none).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    // ensures: all tensor names, in data-offset order.
    const std::vector<std::string>& names() const noexcept { return names_; }
    // ensures: whether a tensor called `name` exists.
    bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

    // requires: nothing.  ensures: dtype, shape and offsets of `name`;
    // throws CheckpointError naming the file and tensor when there is no such tensor.
    const TensorInfo& info(std::string_view name) const {
        const auto it = tensors_.find(name);
        if (it == tensors_.end()) detail::fail_tensor(path_, name, "not found in the checkpoint");
        return it->second;
    }

    // requires: dst.size() == product(expected_shape), else std::invalid_argument.
    // ensures: dst holds tensor `name`; throws CheckpointError (naming file, tensor, expected
    // and found) when it is missing, its dtype is not dtype_of<T>() or its shape differs.
    template <SafetensorsElement T>
    void read(std::string_view name, std::span<T> dst, std::span<const std::int64_t> expected_shape) const {
        const auto expected_count = detail::element_count(expected_shape);
        if (!expected_count || *expected_count != dst.size()) {
            throw std::invalid_argument("vgg::io: reading tensor '" + std::string(name) + "' with shape " +
                                        shape_to_string(expected_shape) + " into a buffer of " +
                                        std::to_string(dst.size()) + " elements");
        }
        const TensorInfo& found = checked_info<T>(name, expected_shape);
        read_at(data_start_ + found.begin, dst.data(), found.byte_size());
    }
    template <SafetensorsElement T>
    void read(std::string_view name, std::span<T> dst, std::initializer_list<std::int64_t> expected_shape) const {
        read<T>(name, dst, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()));
    }

    // The common case, spelled out: F32 tensor into a float buffer.
    void read_f32(std::string_view name, std::span<float> dst, std::span<const std::int64_t> expected_shape) const {
        read<float>(name, dst, expected_shape);
    }

    // requires: nothing.  ensures: the whole tensor `name`, whatever its shape; throws
    // CheckpointError when missing or its dtype is not dtype_of<T>().
    template <SafetensorsElement T>
    std::vector<T> read_all(std::string_view name) const {
        const TensorInfo& found = checked_info<T>(name, std::nullopt);
        std::vector<T> values(static_cast<std::size_t>(found.element_count()));
        read_at(data_start_ + found.begin, values.data(), found.byte_size());
        return values;
    }

private:
    friend SafetensorsFile load_safetensors(const std::filesystem::path& path);
    friend SafetensorsFile load_safetensors_from_bytes(std::span<const std::uint8_t> bytes,
                                                       const std::filesystem::path& name);
    SafetensorsFile() = default;

    // requires: [offset, offset + size) within the file (validated by parse).
    void read_at(std::uint64_t offset, void* dst, std::uint64_t size) const {
        if (fd_.get() >= 0) {
            detail::read_exactly(fd_.get(), path_, offset, dst, size);
            return;
        }
        if (offset > bytes_.size() || size > bytes_.size() - offset) {
            detail::fail(path_, "read of " + std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                                    " past the end of " + std::to_string(bytes_.size()) + " bytes");
        }
        if (size > 0) std::memcpy(dst, bytes_.data() + offset, static_cast<std::size_t>(size));
    }

    void parse(std::uint64_t file_size);

    template <SafetensorsElement T>
    const TensorInfo& checked_info(std::string_view name,
                                   std::optional<std::span<const std::int64_t>> expected_shape) const {
        const TensorInfo& found = info(name);
        if (found.dtype != dtype_of<T>()) {
            detail::fail_tensor(path_, name,
                                "expected dtype " + std::string(dtype_name(dtype_of<T>())) + ", found " +
                                    std::string(dtype_name(found.dtype)));
        }
        if (expected_shape && !std::ranges::equal(*expected_shape, found.shape)) {
            detail::fail_tensor(path_, name,
                                "expected shape " + shape_to_string(*expected_shape) + ", found " +
                                    shape_to_string(found.shape));
        }
        return found;
    }

    std::filesystem::path path_;
    detail::FileDescriptor fd_;           // the open file, or -1 when reading from bytes_
    std::vector<std::uint8_t> bytes_;     // the whole file, for load_safetensors_from_bytes
    std::uint64_t data_start_ = 0;  // 8 + header length
    std::map<std::string, std::string> metadata_;
    std::vector<std::string> names_;
    std::map<std::string, TensorInfo, std::less<>> tensors_;
};

// Validates the layout and header of the file behind read_at (file_size bytes) and fills the
// tensor index.  Shared by both entry points, so a file and its bytes are judged identically.
inline void SafetensorsFile::parse(std::uint64_t file_size) {
    using detail::fail;
    using detail::fail_tensor;
    SafetensorsFile& file = *this;
    const std::filesystem::path& path = path_;

    if (file_size < 8) {
        fail(path, "truncated: " + std::to_string(file_size) +
                       " bytes, but the 8-byte header length alone needs 8");
    }
    unsigned char length_bytes[8];
    file.read_at(0, length_bytes, 8);
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
    if (header_size > detail::max_header_bytes) {
        fail(path, "header length " + std::to_string(header_size) + " bytes exceeds the " +
                       std::to_string(detail::max_header_bytes) + "-byte limit (corrupt or not safetensors)");
    }
    if (header_size > file_size - 8) {
        fail(path, "header length " + std::to_string(header_size) + " bytes runs past the end of the file (" +
                       std::to_string(file_size - 8) + " bytes after the length field)");
    }
    std::string header_text(static_cast<std::size_t>(header_size), '\0');
    file.read_at(8, header_text.data(), header_size);
    file.data_start_ = 8 + header_size;
    const std::uint64_t buffer_size = file_size - file.data_start_;

    // nlohmann stops at a NUL as if the input ended, which would accept "{}\0garbage"; valid
    // JSON never holds a raw NUL (strings must escape it), so refuse it outright.
    if (const auto nul = header_text.find('\0'); nul != std::string::npos) {
        fail(path, "header is not valid JSON: NUL byte at header offset " + std::to_string(nul) +
                       " (padding must be spaces)");
    }
    detail::HeaderParseGuard guard;
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(header_text, std::ref(guard));
    } catch (const detail::HeaderParseGuard::Abort&) {
        if (guard.duplicate_key) fail(path, "duplicate key '" + *guard.duplicate_key + "' in the header");
        if (guard.too_many_items) {
            fail(path, "header holds more than " + std::to_string(detail::max_header_json_items) +
                           " JSON keys and values, more than any checkpoint this reader accepts (corrupt?)");
        }
        fail(path, "header JSON nests deeper than any valid safetensors header");
    } catch (const nlohmann::json::exception& error) {
        fail(path, std::string("header is not valid JSON: ") + error.what());
    }
    if (!header.is_object()) fail(path, "header must be a JSON object, found " + detail::json_type(header));

    struct Placed {
        const std::string* name;
        std::uint64_t begin, end;
    };
    std::vector<Placed> placed;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object()) {
                fail(path, "__metadata__ must be an object of strings, found " + detail::json_type(entry));
            }
            for (const auto& [key, value] : entry.items()) {
                if (!value.is_string()) {
                    fail(path, "__metadata__ key '" + key + "' must be a string, found " +
                                   detail::json_type(value) + " " + detail::json_excerpt(value));
                }
                file.metadata_.emplace(key, value.get<std::string>());
            }
            continue;
        }
        if (!entry.is_object()) fail_tensor(path, name, "entry must be a JSON object, found " + detail::json_type(entry));
        for (const char* field : {"dtype", "shape", "data_offsets"}) {
            if (!entry.contains(field)) fail_tensor(path, name, std::string("entry has no \"") + field + "\"");
        }
        const auto& dtype_json = entry.at("dtype");
        const auto& shape_json = entry.at("shape");
        const auto& offsets_json = entry.at("data_offsets");
        if (!dtype_json.is_string()) {
            fail_tensor(path, name, "\"dtype\" must be a string, found " + detail::json_type(dtype_json));
        }
        const auto dtype = parse_dtype(dtype_json.get<std::string>());
        if (!dtype) fail_tensor(path, name, "unknown dtype " + detail::json_excerpt(dtype_json));
        if (!shape_json.is_array()) {
            fail_tensor(path, name, "\"shape\" must be an array, found " + detail::json_type(shape_json));
        }
        TensorInfo info;
        info.dtype = *dtype;
        for (const auto& dim_json : shape_json) {
            const auto dim = detail::json_non_negative_integer(dim_json);
            if (!dim || *dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
                fail_tensor(path, name, "shape " + detail::json_excerpt(shape_json) +
                                            " has a dim that is not a non-negative integer: " +
                                            detail::json_excerpt(dim_json));
            }
            info.shape.push_back(static_cast<std::int64_t>(*dim));
        }
        if (!offsets_json.is_array() || offsets_json.size() != 2) {
            fail_tensor(path, name, "\"data_offsets\" must be [begin, end], found " + detail::json_excerpt(offsets_json));
        }
        const auto begin = detail::json_non_negative_integer(offsets_json.at(0));
        const auto end = detail::json_non_negative_integer(offsets_json.at(1));
        if (!begin || !end) {
            fail_tensor(path, name, "\"data_offsets\" must be non-negative integers, found " +
                                        detail::json_excerpt(offsets_json));
        }
        if (*begin > *end) {
            fail_tensor(path, name, "data_offsets [" + std::to_string(*begin) + "," + std::to_string(*end) +
                                        "] begin after end");
        }
        // Every range is checked here, against the buffer, before any size is derived from it.
        if (*end > buffer_size) {
            fail_tensor(path, name, "data_offsets [" + std::to_string(*begin) + "," + std::to_string(*end) +
                                        "] end past the data buffer of " + std::to_string(buffer_size) +
                                        " bytes (by " + std::to_string(*end - buffer_size) + ")");
        }
        const auto count = detail::element_count(info.shape);
        const auto bytes = count ? detail::checked_mul(*count, dtype_size(info.dtype)) : std::nullopt;
        if (!bytes) {
            fail_tensor(path, name, "shape " + shape_to_string(info.shape) + " overflows 64-bit byte counts");
        }
        if (*bytes != *end - *begin) {
            fail_tensor(path, name, "dtype " + std::string(dtype_name(info.dtype)) + " with shape " +
                                        shape_to_string(info.shape) + " needs " + std::to_string(*bytes) +
                                        " bytes, but data_offsets [" + std::to_string(*begin) + "," +
                                        std::to_string(*end) + "] span " + std::to_string(*end - *begin));
        }
        info.begin = *begin;
        info.end = *end;
        const auto [it, inserted] = file.tensors_.emplace(name, std::move(info));
        // The parse guard already refuses duplicate keys; this keeps the invariant local.
        if (!inserted) fail_tensor(path, name, "appears twice in the header");
        placed.push_back({&it->first, it->second.begin, it->second.end});
    }

    // Tensors must tile the buffer: sorted by offset, each starts where the previous ended.
    std::ranges::sort(placed, [](const Placed& a, const Placed& b) {
        return std::tie(a.begin, a.end, *a.name) < std::tie(b.begin, b.end, *b.name);
    });
    std::uint64_t covered = 0;
    const std::string* previous = nullptr;
    auto range = [](std::uint64_t b, std::uint64_t e) {
        return "[" + std::to_string(b) + "," + std::to_string(e) + "]";
    };
    for (const Placed& tensor : placed) {
        if (tensor.begin < covered) {
            fail_tensor(path, *tensor.name, "data_offsets " + range(tensor.begin, tensor.end) +
                                                " overlap tensor '" + *previous + "', which ends at " +
                                                std::to_string(covered));
        }
        if (tensor.begin > covered) {
            fail_tensor(path, *tensor.name,
                        "data_offsets " + range(tensor.begin, tensor.end) + " leave a hole: bytes " +
                            range(covered, tensor.begin) + " belong to no tensor (expected begin " +
                            std::to_string(covered) + (previous ? ", the end of '" + *previous + "'" : "") + ")");
        }
        covered = tensor.end;
        previous = tensor.name;
        file.names_.push_back(*tensor.name);
    }
    // Unreachable while every end is checked against buffer_size above; kept so that the
    // subtraction below can never wrap into "18446744073709551615 trailing bytes".
    if (covered > buffer_size) {
        fail(path, "tensors cover " + std::to_string(covered) + " bytes, past the data buffer of " +
                       std::to_string(buffer_size) + " bytes");
    }
    if (covered != buffer_size) {
        fail(path, "data buffer has " + std::to_string(buffer_size) + " bytes but the tensors cover only " +
                       std::to_string(covered) + " (" + std::to_string(buffer_size - covered) +
                       " trailing bytes belong to no tensor)");
    }
}

// requires: nothing (the file is untrusted).
// ensures: the file is opened (a FIFO or any other non-regular file is refused without
// blocking) and its header fully validated: a JSON object of well-formed entries with known
// dtypes and non-negative integer dims, whose byte ranges match shape x dtype size, are unique,
// and tile the data buffer exactly (no overlap, no hole, no trailing bytes), plus an optional
// string->string "__metadata__"; the header is at most max_header_bytes long, nests at most
// max_json_depth deep and holds at most max_header_json_items keys and values, each checked
// before memory is spent on it.  Otherwise throws CheckpointError naming the file, the tensor
// and expected vs found.
inline SafetensorsFile load_safetensors(const std::filesystem::path& path) {
    SafetensorsFile file;
    file.path_ = path;
    detail::OpenedFile opened = detail::open_regular_file(path);
    if (!opened.problem.empty()) detail::fail(path, opened.problem + "; expected a safetensors file");
    file.fd_ = std::move(opened.fd);
    file.parse(opened.size);
    return file;
}

// requires: nothing (the bytes are untrusted).
// ensures: load_safetensors of a file holding `bytes` (copied; reads come from the copy), with
// `name` standing for the file in messages.  For fuzzing and for files already in memory.
inline SafetensorsFile load_safetensors_from_bytes(std::span<const std::uint8_t> bytes,
                                                   const std::filesystem::path& name) {
    SafetensorsFile file;
    file.path_ = name;
    file.bytes_.assign(bytes.begin(), bytes.end());
    file.parse(file.bytes_.size());
    return file;
}

// One tensor to write.  `data` must stay valid during save_safetensors.
struct TensorRecord {
    std::string name;
    std::vector<std::int64_t> shape;
    Dtype dtype = Dtype::F32;
    const void* data = nullptr;
    std::size_t byte_size = 0;
};

// requires: values has product(shape) elements (checked by save_safetensors, not here).
// ensures: a record of dtype dtype_of<T>() viewing `values` (which must outlive the save).
template <std::ranges::contiguous_range Values>
    requires SafetensorsElement<std::remove_cv_t<std::ranges::range_value_t<Values>>>
TensorRecord tensor_record(std::string name, std::vector<std::int64_t> shape, const Values& values) {
    using T = std::remove_cv_t<std::ranges::range_value_t<Values>>;
    return TensorRecord{std::move(name), std::move(shape), dtype_of<T>(), std::ranges::data(values),
                        std::ranges::size(values) * sizeof(T)};
}

namespace detail {

// ensures: the padded header bytes for `tensors` in the given order, after validating every
// record (names unique, not "__metadata__", valid UTF-8; sizes consistent with shapes).
inline std::string build_header(const std::filesystem::path& path, std::span<const TensorRecord> tensors,
                                const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string_view> seen;
    std::uint64_t offset = 0;
    for (const TensorRecord& tensor : tensors) {
        auto refuse = [&](const std::string& why) {
            throw CheckpointError("vgg::io: cannot save " + quoted(path) + ": tensor '" + tensor.name + "': " + why);
        };
        if (tensor.name == "__metadata__") refuse("the name is reserved for the metadata object");
        if (!seen.insert(tensor.name).second) refuse("duplicate tensor name");
        const auto count = element_count(tensor.shape);
        if (!count) refuse("shape " + shape_to_string(tensor.shape) + " has a negative dim or overflows");
        const auto bytes = checked_mul(*count, dtype_size(tensor.dtype));
        if (!bytes || *bytes != tensor.byte_size) {
            refuse("dtype " + std::string(dtype_name(tensor.dtype)) + " with shape " +
                   shape_to_string(tensor.shape) + " needs " + (bytes ? std::to_string(*bytes) : "too many") +
                   " bytes, but the record holds " + std::to_string(tensor.byte_size));
        }
        if (tensor.byte_size != 0 && tensor.data == nullptr) refuse("data is null");
        header[tensor.name] = {{"dtype", dtype_name(tensor.dtype)},
                               {"shape", tensor.shape},
                               {"data_offsets", {offset, offset + *bytes}}};
        offset += *bytes;
    }
    std::string text;
    try {
        text = header.dump();  // compact, like the reference writer
    } catch (const nlohmann::json::exception&) {
        throw CheckpointError("vgg::io: cannot save " + quoted(path) +
                              ": a tensor name or metadata string is not valid UTF-8");
    }
    // Pad so the data starts 8-byte aligned, as the reference writer does (mmap readers rely on it).
    text.append((8 - text.size() % 8) % 8, ' ');
    if (text.size() > max_header_bytes) {
        throw CheckpointError("vgg::io: cannot save " + quoted(path) + ": header of " + std::to_string(text.size()) +
                              " bytes exceeds the " + std::to_string(max_header_bytes) + "-byte limit of readers");
    }
    return text;
}

}  // namespace detail

// requires: each record's byte_size == product(shape) * dtype_size(dtype), names unique.
// ensures: `path` atomically holds a safetensors file with the tensors in the given order
// (header keys and data alike) and `metadata` as "__metadata__" (omitted when empty).
// Bytes go to "<path>.tmp" in the same directory, are fsync'ed, then renamed over `path`,
// so any failure (bad record, full disk, crash) leaves the previous `path` untouched; on
// error the temp file is removed and CheckpointError names the path and the OS error.
// Not safe against two concurrent saves to the same path (they share the temp name).
inline void save_safetensors(const std::filesystem::path& path, std::span<const TensorRecord> tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    // Validate before touching the file system: a bad record must not even create the temp file.
    const std::string header = detail::build_header(path, tensors, metadata);

    std::filesystem::path temp = path;
    temp += ".tmp";
    detail::FileDescriptor fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666));
    if (fd.get() < 0) detail::fail_os(temp, "create", errno);
    try {
        unsigned char length_bytes[8];
        for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(header.size() >> (8 * i));
        detail::write_exactly(fd.get(), temp, length_bytes, 8);
        detail::write_exactly(fd.get(), temp, header.data(), header.size());
        for (const TensorRecord& tensor : tensors) detail::write_exactly(fd.get(), temp, tensor.data, tensor.byte_size);
        // Without fsync a crash after the rename can leave `path` empty on ext4/xfs.
        if (::fsync(fd.get()) != 0) detail::fail_os(temp, "fsync", errno);
        if (::close(fd.release()) != 0) detail::fail_os(temp, "close", errno);
        if (::rename(temp.c_str(), path.c_str()) != 0) {
            const int error = errno;
            throw CheckpointError("vgg::io: cannot rename " + detail::quoted(temp) + " to " + detail::quoted(path) +
                                  ": " + std::system_category().message(error));
        }
    } catch (...) {
        fd.reset();
        ::unlink(temp.c_str());
        throw;
    }
    // Persist the rename itself.  Best effort: some file systems refuse fsync on directories,
    // and the new file is already complete and in place.
    const auto directory = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    detail::FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir.get() >= 0) (void)::fsync(dir.get());
}

// A named float parameter of a network, for saving.
struct ParamRef {
    std::string name;
    std::vector<std::int64_t> shape;
    std::span<const float> data;
};

// A named float parameter of a network, for loading into.
struct ParamMutRef {
    std::string name;
    std::vector<std::int64_t> shape;
    std::span<float> data;
};

struct LoadPolicy {
    bool allow_extra = false;  // tolerate tensors in the file that no parameter asks for
};

// requires: each data.size() == product(shape), names unique (else CheckpointError).
// ensures: save_safetensors of the parameters as F32, in the given order.
inline void save_parameters(const std::filesystem::path& path, std::span<const ParamRef> params,
                            const std::map<std::string, std::string>& metadata = {}) {
    std::vector<TensorRecord> records;
    records.reserve(params.size());
    for (const ParamRef& param : params) records.push_back(tensor_record(param.name, param.shape, param.data));
    save_safetensors(path, records, metadata);
}

// requires: each data.size() == product(shape) and names unique, else std::invalid_argument.
// ensures: every parameter holds its tensor from `file`, or nothing was written at all:
// first every parameter is checked to be present as F32 with exactly its shape and, unless
// policy.allow_extra, the file is checked to hold no other tensor; a single CheckpointError
// then lists every missing / unexpected / mismatched tensor.
inline void load_parameters(const SafetensorsFile& file, std::span<const ParamMutRef> params,
                            LoadPolicy policy = {}) {
    std::set<std::string_view> expected;
    for (const ParamMutRef& param : params) {
        if (!expected.insert(param.name).second) {
            throw std::invalid_argument("vgg::io: parameter '" + param.name + "' is listed twice");
        }
        const auto count = detail::element_count(param.shape);
        if (!count || *count != param.data.size()) {
            throw std::invalid_argument("vgg::io: parameter '" + param.name + "' has shape " +
                                        shape_to_string(param.shape) + " but a buffer of " +
                                        std::to_string(param.data.size()) + " floats");
        }
    }
    std::vector<std::string> missing, unexpected, mismatched;
    for (const ParamMutRef& param : params) {
        if (!file.contains(param.name)) {
            missing.push_back(param.name);
            continue;
        }
        const TensorInfo& found = file.info(param.name);
        if (found.dtype != Dtype::F32 || found.shape != param.shape) {
            mismatched.push_back("'" + param.name + "' expected F32 " + shape_to_string(param.shape) + ", found " +
                                 std::string(dtype_name(found.dtype)) + " " + shape_to_string(found.shape));
        }
    }
    if (!policy.allow_extra) {
        for (const std::string& name : file.names()) {
            if (!expected.contains(name)) unexpected.push_back(name);
        }
    }
    if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
        auto list = [](const std::vector<std::string>& items, bool quote) {
            std::string out;
            constexpr std::size_t shown = 32;  // a VGG has ~22 tensors; a wrong file can have thousands
            for (std::size_t i = 0; i < items.size() && i < shown; ++i) {
                out += (i ? ", " : "") + (quote ? "'" + items[i] + "'" : items[i]);
            }
            if (items.size() > shown) out += ", ... (" + std::to_string(items.size() - shown) + " more)";
            return out;
        };
        std::string what = "does not match the parameters being loaded:";
        if (!missing.empty()) what += " missing tensors: " + list(missing, true) + ";";
        if (!unexpected.empty()) what += " unexpected tensors: " + list(unexpected, true) + ";";
        if (!mismatched.empty()) what += " mismatched tensors: " + list(mismatched, false) + ";";
        what.pop_back();
        detail::fail(file.path(), what);
    }
    for (const ParamMutRef& param : params) file.read_f32(param.name, param.data, param.shape);
}

// ensures: load_parameters(load_safetensors(path), params, policy).
inline void load_parameters(const std::filesystem::path& path, std::span<const ParamMutRef> params,
                            LoadPolicy policy = {}) {
    load_parameters(load_safetensors(path), params, policy);
}

}  // namespace vgg::io
