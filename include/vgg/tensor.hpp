#pragma once
// The tensor types at the API: NCHW float batches whose memory layout is identical to a
// contiguous PyTorch tensor (Eigen's RowMajor storage with dimensions N, C, H, W).

#include <unsupported/Eigen/CXX11/Tensor>

namespace vgg {

/// A batch of images, N x C x H x W.
using Tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
/// A read-only view of the network's output, N x classes; valid until the next forward pass.
using LogitsView = Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>>;

}  // namespace vgg
