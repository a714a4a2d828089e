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
  static constexpr bool torchvision = false;  // the chapter's layout: modules vgg_block_1.. and fc

  static constexpr long long num_params(long long features) {
    return features * Hidden + Hidden + 1LL * Hidden * Hidden + Hidden + 1LL * Hidden * Classes + Classes;
  }
};

/// torchvision's head: AdaptiveAvgPool2d((Pool, Pool)) as module `avgpool`, then `classifier`:
/// Linear(C*Pool*Pool, Hidden), ReLU, Dropout(P), Linear(Hidden, Hidden), ReLU, Dropout(P),
/// Linear(Hidden, Classes). A network ending in it names its modules as torchvision.models.VGG
/// does: features.N, avgpool, classifier.N (state_dict keys features.0.weight, classifier.6.bias).
template <int Hidden, int Classes, int Pool = 7, double DropoutP = 0.5>
struct TorchvisionClassifier {
  static_assert(Hidden >= 1, "vgg::TorchvisionClassifier<Hidden, Classes>: the number of hidden units must be positive.");
  static_assert(Classes >= 1, "vgg::TorchvisionClassifier<Hidden, Classes>: the number of classes must be positive.");
  static_assert(Pool >= 1, "vgg::TorchvisionClassifier<Hidden, Classes, Pool>: the pooled size must be positive.");
  static_assert(DropoutP >= 0.0 && DropoutP < 1.0,
                "vgg::TorchvisionClassifier<Hidden, Classes, Pool, DropoutP>: the dropout probability must lie in [0, 1).");

  static constexpr int hidden = Hidden;
  static constexpr int classes = Classes;
  static constexpr int pool = Pool;
  static constexpr double dropout = DropoutP;
  static constexpr bool torchvision = true;
};

template <class T>
inline constexpr bool is_classifier = false;
template <int H, int C, double P>
inline constexpr bool is_classifier<Classifier<H, C, P>> = true;
template <int H, int C, int Pool, double P>
inline constexpr bool is_classifier<TorchvisionClassifier<H, C, Pool, P>> = true;

}  // namespace vgg
