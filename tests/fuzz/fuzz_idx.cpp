// Fuzz target: the IDX reader, raw and gzip (detected by content, as for files), from memory.
// Input: the bytes of a file (an IDX file starts with 0x00, a gzip file with 0x1F), or 'Z' followed
// by IDX content that this target gzips first. Mutating a gzip file almost always breaks its CRC,
// so without 'Z' the fuzzer would rarely get past zlib's checks to test what the reader does with
// well-formed gzip holding a short, over-long or lying IDX file.
// Each input is read both as images and as labels, so whichever magic a mutation keeps, the header,
// size, limit and payload checks all run. A DataError is the expected way to refuse; any other
// exception escapes and is reported as a crash (a bare std::bad_alloc, say).
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_support.hpp"
#include "vgg/data/idx.hpp"

namespace {

std::vector<std::uint8_t> gzip(std::span<const std::uint8_t> content) {
  z_stream zs{};
  VGG_FUZZ_CHECK(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<std::uint8_t> out(deflateBound(&zs, static_cast<uLong>(content.size())));
  zs.next_in = const_cast<Bytef*>(content.data());
  zs.avail_in = static_cast<uInt>(content.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  VGG_FUZZ_CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

void read_both_ways(std::span<const std::uint8_t> bytes) {
  try {
    const vgg::data::IdxImages images = vgg::data::idx_images_from_bytes(bytes, "fuzz-images");
    VGG_FUZZ_CHECK(images.rows > 0 && images.cols > 0);
    VGG_FUZZ_CHECK(images.pixels.size() == images.count * images.pixels_per_image());
    // Touch the last pixel of the last image: ASan checks it lies inside the buffer.
    if (images.count > 0) VGG_FUZZ_CHECK(images.image(images.count - 1).back() == images.pixels.back());
  } catch (const vgg::data::DataError&) {
  }
  try {
    const auto labels = vgg::data::idx_labels_from_bytes(bytes, "fuzz-labels", 10);
    for (const std::uint8_t label : labels) VGG_FUZZ_CHECK(label < 10);
  } catch (const vgg::data::DataError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  if (size > 0 && data[0] == 'Z') {
    read_both_ways(gzip(bytes.subspan(1)));
  } else {
    read_both_ways(bytes);
  }
  return 0;
}
