// Helper of the vgg-train fine-tuning test (vgg_train_fine_tune.cmake). vgg-train's class count is
// fixed at 10 (Fashion-MNIST), so the checkpoints it cannot write come from here:
//   fine_tune_helper write OUT CLASSES WIDTH_DIVISOR   weights of vgg11<Input<1,32,32>, CLASSES, D>
//                                                     (CLASSES 5 or 10, D 4 or 8), seed 7
//   fine_tune_helper compare A B                      one line per float tensor of A:
//                                                     "same NAME" or "differs NAME" (bitwise)
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {
template <int Classes, int D>
void write(const char* path) {
  auto net = std::make_unique<vgg::vgg11<vgg::Input<1, 32, 32>, Classes, D>>(7);
  vgg::io::save_weights(path, *net);
}
}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "write" && argc == 5) {
      const std::string classes = argv[3], width = argv[4];
      if (classes == "5" && width == "8") write<5, 8>(argv[2]);
      else if (classes == "10" && width == "4") write<10, 4>(argv[2]);
      else if (classes == "10" && width == "8") write<10, 8>(argv[2]);
      else throw std::invalid_argument("unsupported CLASSES/WIDTH_DIVISOR " + classes + "/" + width);
      return 0;
    }
    if (mode == "compare" && argc == 4) {
      const auto a = vgg::io::load_safetensors(argv[2]);
      const auto b = vgg::io::load_safetensors(argv[3]);
      for (const auto& name : a.names()) {
        if (a.info(name).dtype != vgg::io::Dtype::F32) continue;
        const auto x = a.read_all<float>(name);
        const bool same = b.contains(name) && b.info(name).dtype == vgg::io::Dtype::F32 &&
                          b.info(name).shape == a.info(name).shape && [&] {
                            const auto y = b.read_all<float>(name);
                            return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
                          }();
        std::printf("%s %s\n", same ? "same" : "differs", name.c_str());
      }
      return 0;
    }
    std::fprintf(stderr, "usage: fine_tune_helper write OUT CLASSES WIDTH_DIVISOR | compare A B\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fine_tune_helper: %s\n", e.what());
    return 1;
  }
}
