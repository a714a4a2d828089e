// Fuzz target: the IDX reader, raw and gzip (detected by content, as for files), from memory.
// Each input is read both as images and as labels, so whichever magic a mutation keeps, the
// header, size, limit and payload checks all run. A DataError is the expected way to refuse;
// any other exception escapes and is reported as a crash (a bare std::bad_alloc, say).
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_support.hpp"
#include "vgg/data/idx.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
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
  return 0;
}
