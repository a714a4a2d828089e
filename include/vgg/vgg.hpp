#pragma once
// Umbrella header: everything a user of vgg needs.
//
//   #include <vgg/vgg.hpp>
//   using Net = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 8>;
//   Net net(/*seed=*/42);
//   vgg::Tensor4 x(64, 1, 224, 224);
//   auto logits = net.forward(x);   // 64 x 10

#include "vgg/backend.hpp"
#include "vgg/block.hpp"
#include "vgg/buffer.hpp"
#include "vgg/classifier.hpp"
#include "vgg/context.hpp"
#include "vgg/cpu/backend.hpp"
#include "vgg/loss.hpp"
#include "vgg/network.hpp"
#include "vgg/optim/adam.hpp"
#include "vgg/optim/schedule.hpp"
#include "vgg/optim/sgd.hpp"
#include "vgg/presets.hpp"
#include "vgg/shape.hpp"
#include "vgg/summary.hpp"
#include "vgg/tensor.hpp"
#include "vgg/train.hpp"
