// Fuzz target: the safetensors reader, from memory (load_safetensors_from_bytes runs the same
// validation as load_safetensors). A CheckpointError is the expected way to refuse. An accepted
// file must be readable in bounds, tensor by tensor, and must survive a round trip through the
// writer's header builder: what the reader accepts, the writer must be able to write back, and the
// reader must then see the same tensors.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "vgg/io/safetensors.hpp"

namespace {

using vgg::io::Dtype;

std::uint64_t read_le64(const std::uint8_t* p) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

// Reads tensor `name` through the typed API when its dtype has a C++ element type.
void read_typed(const vgg::io::SafetensorsFile& file, const std::string& name, const vgg::io::TensorInfo& info) {
  auto read = [&]<class T>(T) {
    const std::vector<T> all = file.read_all<T>(name);
    VGG_FUZZ_CHECK(all.size() * sizeof(T) == info.byte_size());
    std::vector<T> shaped(all.size());
    file.read<T>(name, std::span<T>(shaped), std::span<const std::int64_t>(info.shape));
    VGG_FUZZ_CHECK(all.empty() || std::memcmp(shaped.data(), all.data(), info.byte_size()) == 0);
  };
  switch (info.dtype) {
    case Dtype::U8: read(std::uint8_t{}); break;
    case Dtype::I8: read(std::int8_t{}); break;
    case Dtype::I16: read(std::int16_t{}); break;
    case Dtype::U16: read(std::uint16_t{}); break;
    case Dtype::I32: read(std::int32_t{}); break;
    case Dtype::U32: read(std::uint32_t{}); break;
    case Dtype::F32: read(float{}); break;
    case Dtype::F64: read(double{}); break;
    case Dtype::I64: read(std::int64_t{}); break;
    case Dtype::U64: read(std::uint64_t{}); break;
    default: break;  // F16, BF16, FP8, BOOL: listed, never read as a C++ type
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  std::optional<vgg::io::SafetensorsFile> file;
  try {
    file.emplace(vgg::io::load_safetensors_from_bytes(bytes, "fuzz.safetensors"));
  } catch (const vgg::io::CheckpointError&) {
    return 0;
  }
  VGG_FUZZ_CHECK(size >= 8);
  const std::uint64_t data_start = 8 + read_le64(data);
  VGG_FUZZ_CHECK(data_start <= size);
  std::vector<vgg::io::TensorRecord> records;
  std::uint64_t covered = 0;
  for (const std::string& name : file->names()) {
    const vgg::io::TensorInfo& info = file->info(name);
    // Accepted ranges lie in the buffer and tile it in name order.
    VGG_FUZZ_CHECK(info.begin == covered && info.begin <= info.end && data_start + info.end <= size);
    covered = info.end;
    read_typed(*file, name, info);
    records.push_back({name, info.shape, info.dtype, data + data_start + info.begin,
                       static_cast<std::size_t>(info.byte_size())});
  }
  VGG_FUZZ_CHECK(data_start + covered == size);

  // Round trip: the writer's header for the same tensors, followed by the same data, reads back
  // as the same file. Any exception here is a reader/writer disagreement, hence a finding.
  const std::string header = vgg::io::detail::build_header("fuzz-roundtrip.safetensors", records, file->metadata());
  std::vector<std::uint8_t> rewritten(8);
  for (std::size_t i = 0; i < 8; ++i) rewritten[i] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  rewritten.insert(rewritten.end(), header.begin(), header.end());
  rewritten.insert(rewritten.end(), data + data_start, data + size);
  const auto again = vgg::io::load_safetensors_from_bytes(rewritten, "fuzz-roundtrip.safetensors");
  VGG_FUZZ_CHECK(again.names() == file->names());
  VGG_FUZZ_CHECK(again.metadata() == file->metadata());
  for (const std::string& name : file->names()) {
    const auto& a = file->info(name);
    const auto& b = again.info(name);
    VGG_FUZZ_CHECK(a.dtype == b.dtype && a.shape == b.shape && a.begin == b.begin && a.end == b.end);
  }
  return 0;
}
