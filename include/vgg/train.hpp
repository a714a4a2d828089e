#pragma once
// One training step (forward, loss, backward, update) and one evaluation batch, composed from the
// network, the loss and an optimizer. Neither allocates in steady state.

#include <cmath>
#include <cstdint>
#include <span>

#include "vgg/context.hpp"
#include "vgg/loss.hpp"  // LossResult
#include "vgg/staging.hpp"

namespace vgg {

/// Trains `net` on one batch in train mode. Returns the batch's mean loss and correct count.
/// requires: x holds labels.size() samples of Net::input_shape; labels in [0, classes).
/// ensures: when the loss is not finite (a NaN or infinity in the batch, the weights, or an
///          overflow), nothing is updated: the weights stay as they were, for the caller to stop and
///          diagnose (HealthMonitor) rather than spread the NaN into every parameter. Batch norm's
///          running statistics are the exception: the forward pass has already moved them (towards
///          NaN, if the batch held one), as in PyTorch.
template <class Net, class Optimizer>
LossResult train_step(Net& net, Optimizer& optimizer, std::span<const float> x, std::span<const std::int32_t> labels) {
  net.set_mode(Mode::train);
  net.forward(x, int(labels.size()));
  const LossResult result = net.loss(labels, /*gradient=*/true);
  if (!std::isfinite(result.loss)) return result;
  net.backward();
  optimizer.step(net);
  return result;
}

/// As train_step, on a batch staged by net.stage() (its upload overlapped the previous step).
template <class Net, class Optimizer>
LossResult train_step(Net& net, Optimizer& optimizer, const StagedBatch& batch) {
  net.set_mode(Mode::train);
  net.forward(batch);
  const LossResult result = net.loss(batch.labels, /*gradient=*/true);
  if (!std::isfinite(result.loss)) return result;
  net.backward();
  optimizer.step(net);
  return result;
}

/// Loss and correct count of one batch in eval mode (dropout off, no gradients).
template <class Net>
LossResult evaluate_batch(Net& net, std::span<const float> x, std::span<const std::int32_t> labels) {
  net.set_mode(Mode::eval);
  net.forward(x, int(labels.size()));
  return net.loss(labels, /*gradient=*/false);
}
/// As evaluate_batch, on a batch staged by net.stage().
template <class Net>
LossResult evaluate_batch(Net& net, const StagedBatch& batch) {
  net.set_mode(Mode::eval);
  net.forward(batch);
  return net.loss(batch.labels, /*gradient=*/false);
}

}  // namespace vgg
