#pragma once
// The CUDA backend (optional): vgg::cuda::Backend, for networks spelled
// vgg::Vgg<...>::on<vgg::cuda::Backend>. Include it from a .cu file compiled by nvcc and link the
// CMake target vgg::cuda (CUDA runtime, cuBLAS, cuDNN); CPU-only translation units never include it.

#if !defined(__CUDACC__)
#error "<vgg/cuda.hpp> holds CUDA kernels: include it from a .cu file compiled by nvcc (CMake target vgg::cuda)"
#endif

#include "vgg/cuda/backend.hpp"
#include "vgg/vgg.hpp"
