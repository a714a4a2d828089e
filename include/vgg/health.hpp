#pragma once
// Numerical health of a training run: NaN and infinity in the loss, a gradient or a weight stop
// training with a message that names the step and the tensor (state_dict name), and says whether a
// lower learning rate is the likely cure. The checks are cheap: the loss every step, a vectorised
// scan of every weight and gradient every few steps and before each checkpoint.
//
//   vgg::HealthMonitor health;
//   for (...) {
//     const auto r = vgg::train_step(net, optimizer, x, labels);
//     health.after_step(net, r.loss, x, epoch);   // throws vgg::NumericalError
//   }
//   health.before_save(net, epoch);              // then save the checkpoint

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgg/layer.hpp"

namespace vgg {

/// requires: nothing. ensures: the index of the first NaN or infinity in `values`, or nullopt.
/// Branch-free over blocks (the exponent bits of a float are all ones exactly for NaN and
/// infinity), so the compiler vectorises it: a few GB/s, negligible next to a training step.
inline std::optional<std::size_t> first_non_finite(std::span<const float> values) {
  constexpr std::uint32_t exponent = 0x7f800000u;
  constexpr std::size_t block = 1024;
  for (std::size_t start = 0; start < values.size(); start += block) {
    const std::size_t end = std::min(values.size(), start + block);
    std::uint32_t any = 0;
    for (std::size_t i = start; i < end; ++i) any |= (std::bit_cast<std::uint32_t>(values[i]) & exponent) == exponent;
    if (any == 0) continue;
    for (std::size_t i = start; i < end; ++i)
      if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

/// ensures: "nan", "inf", "-inf" or the value in %g, for messages.
inline std::string describe_value(float value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[32];
  std::snprintf(text, sizeof text, "%g", double(value));
  return text;
}

/// Where the first non-finite value of a network is.
struct NonFiniteValue {
  std::string tensor;     ///< state_dict name, e.g. "vgg_block_2.0.weight"
  bool gradient = false;  ///< in the tensor's gradient rather than its value
  std::size_t index = 0;  ///< flat element index
  float value = 0;

  std::string describe() const {
    return (gradient ? "the gradient of '" : "the weight '") + tensor + "' holds " + describe_value(value) +
           " at element " + std::to_string(index);
  }
};

/// requires: nothing. ensures: the first NaN or infinity of each tensor that holds one: weights
/// first, then (with `gradients`) gradients, each from the output backwards; empty when all are
/// finite. Backwards, because NaN spreads backwards within a step (the backward pass carries it
/// to every earlier layer, the update to their weights), while the ReLUs stop it going forwards:
/// the tensor nearest the output is usually where it began.
/// `values` (in the network's backend memory) readable on the host: the span itself on a
/// host-memory backend, else a copy in `scratch` (device backends: the checks are periodic).
template <class Net>
std::span<const float> host_readable(Net& net, std::span<const float> values, std::vector<float>& scratch) {
  if constexpr (Net::backend::host_memory) {
    return values;
  } else {
    scratch.resize(values.size());
    Net::backend::copy_to_host(values.data(), scratch.data(), values.size(), net.context());
    return scratch;
  }
}

template <class Net>
std::vector<NonFiniteValue> list_non_finite(Net& net, bool gradients = true) {
  std::vector<NonFiniteValue> found;
  std::vector<float> scratch;
  for (const bool in_gradient : {false, true}) {
    if (in_gradient && !gradients) break;
    const std::size_t group_start = found.size();
    net.for_each_parameter([&](const ParameterView& p) {
      const std::span<const float> values = host_readable(net, in_gradient ? p.grad : p.value, scratch);
      if (const auto i = first_non_finite(values)) found.push_back({p.name, in_gradient, *i, values[*i]});
    });
    std::reverse(found.begin() + std::ptrdiff_t(group_start), found.end());
  }
  return found;
}

/// ensures: the first entry of list_non_finite(net, gradients) (the non-finite weight nearest the
/// output, else the gradient nearest the output), or nullopt.
template <class Net>
std::optional<NonFiniteValue> find_non_finite(Net& net, bool gradients = true) {
  auto all = list_non_finite(net, gradients);
  if (all.empty()) return std::nullopt;
  return all.front();
}

/// A NaN or infinity stopped training. what() names the step and the tensor.
class NumericalError : public std::runtime_error {
 public:
  NumericalError(const std::string& message, bool lower_lr_advised)
      : std::runtime_error(message), lower_lr_advised_(lower_lr_advised) {}
  /// Whether the message advises a lower learning rate (finite inputs, diverging run).
  bool lower_lr_advised() const noexcept { return lower_lr_advised_; }

 private:
  bool lower_lr_advised_;
};

/// Watches one training run. Not thread-safe; one per run.
class HealthMonitor {
 public:
  /// Weights larger than this in magnitude mean the run is diverging (a trained VGG's are < 10).
  static constexpr float kDivergentWeight = 1e4f;

  /// requires: scan_every >= 1: every scan_every-th step, all weights and gradients are scanned.
  explicit HealthMonitor(std::uint64_t scan_every = 16) : scan_every_(std::max<std::uint64_t>(scan_every, 1)) {}

  /// requires: called right after train_step(net, ..., inputs, ...) returned `loss`.
  /// ensures: returns when the loss (and on scan steps every weight and gradient) is finite;
  /// otherwise throws NumericalError naming the step (1-based within this monitor), `epoch`
  /// (1-based, for the message) and the first non-finite tensor.
  template <class Net>
  void after_step(Net& net, double loss, std::span<const float> inputs, long long epoch) {
    ++steps_;
    if (!std::isfinite(loss)) {
      // NaN reaches the loss as in PyTorch, and train_step then leaves the weights alone: name the
      // source (the batch, else a weight) rather than the symptom.
      if (const auto i = first_non_finite(inputs))
        fail(net, "the input batch holds " + describe_value(inputs[*i]) + " at element " + std::to_string(*i), inputs,
             epoch);
      if (const auto bad = find_non_finite(net, /*gradients=*/false)) fail(net, bad->describe(), inputs, epoch);
      fail(net, "the loss is " + describe_value(float(loss)), inputs, epoch);
    }
    if (steps_ % scan_every_ == 0) {
      // An infinity need not reach the loss (-inf in the bias of a class no sample has gives that
      // logit a softmax term of 0), nor a NaN gradient of a layer that no later step reads.
      if (const auto i = first_non_finite(inputs))
        fail(net, "the input batch holds " + describe_value(inputs[*i]) + " at element " + std::to_string(*i), inputs,
             epoch);
      if (const auto bad = find_non_finite(net)) fail(net, bad->describe(), inputs, epoch);
    }
    if (!first_loss_) first_loss_ = loss;
    lowest_loss_ = std::min(lowest_loss_, loss);
    last_loss_ = loss;
  }

  /// ensures: every weight and gradient is finite, or NumericalError (call before saving, so a
  /// checkpoint never holds NaN and the previous one stays the last good one).
  template <class Net>
  void before_save(Net& net, long long epoch) {
    if (const auto bad = find_non_finite(net)) fail(net, bad->describe(), {}, epoch);
  }

  std::uint64_t steps() const { return steps_; }

 private:
  template <class Net>
  [[noreturn]] void fail(Net& net, const std::string& symptom, std::span<const float> inputs, long long epoch) {
    std::string message = "training stopped at step " + std::to_string(steps_) + " (epoch " + std::to_string(epoch) +
                          "): " + symptom;
    // Every tensor holding one (nearest the output first), not just the first.
    const auto bad = list_non_finite(net);
    constexpr std::size_t shown = 6;
    std::string listed;
    for (std::size_t i = 0; i < bad.size() && i < shown; ++i) listed += (i ? ", " : "") + bad[i].describe();
    if (bad.size() > shown) listed += ", and " + std::to_string(bad.size() - shown) + " more tensors";
    if (!bad.empty() && !(bad.size() == 1 && bad[0].describe() == symptom))
      message += "; non-finite values in " + std::to_string(bad.size()) + " tensor(s): " + listed;
    if (bad.empty() && symptom.rfind("the loss", 0) == 0)
      message += "; every weight and gradient is finite, so the forward pass overflowed";
    float largest = 0;  // largest finite weight magnitude
    std::vector<float> scratch;
    net.for_each_parameter([&](const ParameterView& p) {
      for (float v : host_readable(net, p.value, scratch))
        if (std::isfinite(v)) largest = std::max(largest, std::fabs(v));
    });
    const bool inputs_finite = !first_non_finite(inputs);
    const bool loss_grew = first_loss_ && last_loss_ > 2 * lowest_loss_ && last_loss_ > *first_loss_;
    const bool divergent = largest > kDivergentWeight;
    const bool lower_lr = inputs_finite && (loss_grew || divergent);
    char detail[160];
    if (!inputs_finite) {
      message += "; the input batch holds NaN or infinity: check the data";
    } else if (lower_lr) {
      std::snprintf(detail, sizeof detail, "; the run was diverging (loss %.4g, lowest %.4g; largest weight %.3g): ",
                    last_loss_, first_loss_ ? lowest_loss_ : last_loss_, double(largest));
      message += std::string(detail) + "the learning rate is likely too high, lower it (--lr)";
    } else {
      std::snprintf(detail, sizeof detail, " (loss %.4g, largest weight %.3g)", last_loss_, double(largest));
      message += "; the inputs were finite and the run was not diverging" + std::string(detail) +
                 ", so a lower learning rate is unlikely to help: the weights were damaged or this is a bug";
    }
    throw NumericalError(message, lower_lr);
  }

  std::uint64_t scan_every_;
  std::uint64_t steps_ = 0;
  std::optional<double> first_loss_;
  double lowest_loss_ = std::numeric_limits<double>::infinity();
  double last_loss_ = 0;
};

}  // namespace vgg
