// A user's program on vgg::image: decode a PNG or JPEG and preprocess it as torchvision does.
#include <vgg/data/image_file.hpp>
#include <vgg/data/imagenet_preprocess.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    const vgg::data::Image input = vgg::data::ImageNetPreprocess{}(vgg::data::read_image(argv[1]));
    std::printf("%zu values\n", input.pixels.size());
  } catch (const vgg::data::ImageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
