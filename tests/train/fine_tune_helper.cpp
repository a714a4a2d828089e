// Helper of the vgg-train fine-tuning test (vgg_train_fine_tune.cmake). vgg-train's class count is
// fixed at 10 (Fashion-MNIST), so the checkpoints it cannot write come from here:
//   fine_tune_helper write OUT CLASSES WIDTH_DIVISOR   weights of vgg11<Input<1,32,32>, CLASSES, D>
//                                                     (CLASSES 5 or 10, D 4 or 8), seed 7
//   fine_tune_helper write-tv OUT MODEL CLASSES       torchvision-layout weights of MODEL (vgg11 or vgg16)
//                                                     <CLASSES, 32, Input<3,32,32>> (CLASSES 10 or 1000),
//                                                     seed 7, as tools/torch_to_safetensors.py writes
//                                                     them: torchvision's names, no vgg metadata
//   fine_tune_helper shape FILE NAME                  the shape of tensor NAME, e.g. "[10,128]"
//   fine_tune_helper compare A B                      one line per float tensor of A:
//                                                     "same NAME" or "differs NAME" (bitwise)
#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace {
template <int Classes, int D>
void write(const char* path) {
  auto net = std::make_unique<vgg::vgg11<vgg::Input<1, 32, 32>, Classes, D>>(7);
  vgg::io::save_weights(path, *net);
}
// Written as a converted torchvision checkpoint is: its tensors under their state_dict names, with
// PyTorch's metadata only (vgg-train must not rely on vgg's architecture metadata there).
template <template <int, int, class> class Model, int Classes>
void write_tv(const char* path) {
  auto net = std::make_unique<Model<Classes, 32, vgg::Input<3, 32, 32>>>(7);
  std::vector<vgg::io::TensorRecord> records;
  net->for_each_parameter([&](const vgg::ParameterView& p) {
    records.push_back(vgg::io::tensor_record(p.name, p.shape, p.value));  // a view: the net outlives the save
  });
  vgg::io::save_safetensors(path, std::span<const vgg::io::TensorRecord>(records), {{"format", "pt"}});
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
    if (mode == "write-tv" && argc == 5) {
      namespace tv = vgg::torchvision;
      const std::string model = argv[3], classes = argv[4];
      if (model == "vgg16" && classes == "1000") write_tv<tv::vgg16, 1000>(argv[2]);
      else if (model == "vgg11" && classes == "1000") write_tv<tv::vgg11, 1000>(argv[2]);
      else if (model == "vgg16" && classes == "10") write_tv<tv::vgg16, 10>(argv[2]);
      else throw std::invalid_argument("unsupported MODEL/CLASSES " + model + "/" + classes);
      return 0;
    }
    if (mode == "shape" && argc == 4) {
      std::printf("%s\n", vgg::io::shape_to_string(vgg::io::load_safetensors(argv[2]).info(argv[3]).shape).c_str());
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
    std::fprintf(stderr, "usage: fine_tune_helper write OUT CLASSES WIDTH_DIVISOR | write-tv OUT MODEL CLASSES | "
                         "compare A B\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fine_tune_helper: %s\n", e.what());
    return 1;
  }
}
