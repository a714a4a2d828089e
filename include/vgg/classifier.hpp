#pragma once
// vgg::Classifier: the description of the VGG head. Its input width F is derived by the network
// from the feature shape, never written by hand.

namespace vgg {

/// Flatten, Linear(F, Hidden), ReLU, Dropout(P), Linear(Hidden, Hidden), ReLU, Dropout(P),
/// Linear(Hidden, Classes).
template <int Hidden, int Classes, double DropoutP = 0.5>
struct Classifier {
  static_assert(Hidden >= 1, "vgg::Classifier<Hidden, Classes>: the number of hidden units must be positive, not zero.");
  static_assert(Classes >= 1, "vgg::Classifier<Hidden, Classes>: the number of classes must be positive, not zero.");
  static_assert(DropoutP >= 0.0 && DropoutP < 1.0,
                "vgg::Classifier<Hidden, Classes, DropoutP>: the dropout probability must lie in [0, 1).");

  static constexpr int hidden = Hidden;
  static constexpr int classes = Classes;
  static constexpr double dropout = DropoutP;

  static constexpr long long num_params(long long features) {
    return features * Hidden + Hidden + 1LL * Hidden * Hidden + Hidden + 1LL * Hidden * Classes + Classes;
  }
};

template <class T>
inline constexpr bool is_classifier = false;
template <int H, int C, double P>
inline constexpr bool is_classifier<Classifier<H, C, P>> = true;

}  // namespace vgg
