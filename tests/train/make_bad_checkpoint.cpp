// Writes a damaged copy of a safetensors checkpoint for the vgg-train command-line tests.
// Usage: make_bad_checkpoint IN OUT nan-weight        (NaN in the first element of fc.7.bias)
//        make_bad_checkpoint IN OUT TENSOR=INTEGER     (e.g. train.epoch=2147483648)
#include <vgg/io/checkpoint.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_bad_checkpoint IN OUT nan-weight|TENSOR=INTEGER\n");
    return 2;
  }
  try {
    const auto file = vgg::io::load_safetensors(argv[1]);
    std::map<std::string, std::vector<float>> floats;
    std::map<std::string, std::vector<std::int64_t>> ints;
    for (const auto& name : file.names()) {
      if (file.info(name).dtype == vgg::io::Dtype::F32) floats[name] = file.read_all<float>(name);
      else ints[name] = file.read_all<std::int64_t>(name);
    }
    const std::string change = argv[3];
    if (change == "nan-weight") {
      floats.at("fc.7.bias").at(0) = std::numeric_limits<float>::quiet_NaN();
    } else {
      const auto equals = change.find('=');
      ints.at(change.substr(0, equals)).at(0) = std::stoll(change.substr(equals + 1));
    }
    std::vector<vgg::io::TensorRecord> records;
    for (const auto& name : file.names())
      records.push_back(floats.contains(name) ? vgg::io::tensor_record(name, file.info(name).shape, floats.at(name))
                                              : vgg::io::tensor_record(name, file.info(name).shape, ints.at(name)));
    vgg::io::save_safetensors(argv[2], records, file.metadata());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_bad_checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
