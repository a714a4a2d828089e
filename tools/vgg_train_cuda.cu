// vgg-train's runs on the CUDA backend (--device cuda, or auto on a machine with a usable GPU):
// vgg_train.cpp compiled again by nvcc, which instantiates its training loop for
// vgg::cuda::Backend and leaves main() to the CPU translation unit.
#include <vgg/cuda.hpp>

#define VGG_TRAIN_CUDA_UNIT
#include "vgg_train.cpp"
