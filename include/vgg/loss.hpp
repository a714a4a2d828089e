#pragma once
// Softmax cross-entropy, fused and numerically stable (log-sum-exp), averaged over the batch as
// torch.nn.CrossEntropyLoss does, with its gradient with respect to the logits.

#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

namespace vgg {

struct LossResult {
  double loss = 0;  ///< mean over the batch
  int correct = 0;  ///< samples whose arg-max logit (first maximum on ties) equals the label
};

/// requires: logits.size() == labels.size() * classes; every label in [0, classes)
///           (else std::invalid_argument naming the sample and the label); grad empty or as large as logits.
/// ensures: when grad is not empty, grad = (softmax(logits) - one_hot(labels)) / batch.
inline LossResult softmax_cross_entropy(std::span<const float> logits, std::span<const std::int32_t> labels,
                                        int classes, std::span<float> grad = {}) {
  const std::size_t n = labels.size();
  if (classes < 1 || logits.size() != n * std::size_t(classes))
    throw std::invalid_argument("vgg::softmax_cross_entropy: " + std::to_string(logits.size()) +
                                " logits do not match " + std::to_string(n) + " labels x " + std::to_string(classes) +
                                " classes");
  if (!grad.empty() && grad.size() < logits.size())
    throw std::invalid_argument("vgg::softmax_cross_entropy: the gradient buffer is too small");
  LossResult result;
  for (std::size_t i = 0; i < n; ++i) {
    const int label = labels[i];
    if (label < 0 || label >= classes)
      throw std::invalid_argument("vgg::softmax_cross_entropy: sample " + std::to_string(i) + " has label " +
                                  std::to_string(label) + ", expected 0.." + std::to_string(classes - 1));
    const float* z = logits.data() + i * std::size_t(classes);
    int best = 0;
    for (int c = 1; c < classes; ++c)
      if (z[c] > z[best]) best = c;
    result.correct += best == label;
    const float zmax = z[best];
    double sum = 0;
    for (int c = 0; c < classes; ++c) sum += std::exp(double(z[c] - zmax));
    const double log_sum = std::log(sum);
    result.loss += log_sum - double(z[label] - zmax);
    if (!grad.empty()) {
      float* g = grad.data() + i * std::size_t(classes);
      for (int c = 0; c < classes; ++c) {
        const double p = std::exp(double(z[c] - zmax) - log_sum);
        g[c] = float((p - (c == label ? 1.0 : 0.0)) / double(n));
      }
    }
  }
  result.loss /= double(n);
  return result;
}

}  // namespace vgg
