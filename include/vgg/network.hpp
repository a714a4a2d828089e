#pragma once
// vgg::Vgg<Input, VggBlock..., Classifier>: the pack is checked at compile time, expanded into a
// flat tuple of layers with static shapes, and run over NCHW batches whose size is a run-time
// value. Every buffer is allocated once, for the largest batch seen, and reused.
//
// The network runs on a backend (backend.hpp): vgg::Vgg<...> is the CPU network, and
// vgg::Vgg<...>::on<B> the same network on backend B (vgg::Network<B, Arch...>). Batches, labels
// and logits cross the API on the host; parameters, activations and gradients live in B's memory.
// A training loop hands batches over one step ahead (stage, then forward(StagedBatch)), so that a
// device backend uploads batch k+1 while step k computes (staging.hpp).

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "vgg/backend.hpp"
#include "vgg/backward_hook.hpp"
#include "vgg/block.hpp"
#include "vgg/buffer.hpp"
#include "vgg/checks.hpp"
#include "vgg/classifier.hpp"
#include "vgg/context.hpp"
#include "vgg/default_backend.hpp"
#include "vgg/function_ref.hpp"
#include "vgg/layer.hpp"
#include "vgg/loss.hpp"
#include "vgg/layers/adaptive_avgpool2d.hpp"
#include "vgg/layers/batchnorm2d.hpp"
#include "vgg/layers/conv2d.hpp"
#include "vgg/layers/dropout.hpp"
#include "vgg/layers/flatten.hpp"
#include "vgg/layers/linear.hpp"
#include "vgg/layers/maxpool2d.hpp"
#include "vgg/memory_error.hpp"
#include "vgg/random.hpp"
#include "vgg/shape.hpp"
#include "vgg/staging.hpp"
#include "vgg/tensor.hpp"

namespace vgg {

namespace detail {

/// The conv layer of a block: Conv+ReLU, or Conv+BatchNorm+ReLU in a batch-norm block.
template <class Block, int In, int H, int W, class B>
using block_conv = std::conditional_t<Block::batch_norm, Conv3x3BatchNormRelu<In, Block::out_channels, H, W, B>,
                                      Conv3x3Relu<In, Block::out_channels, H, W, B>>;

/// The layers of one block whose input has shape S: Conv+ReLU (In -> Out), (NumConvs - 1) x
/// Conv+ReLU (Out -> Out), MaxPool; each conv with a BatchNorm before its ReLU in a batch-norm block.
template <Shape S, class Block, class B, class Repeats = std::make_index_sequence<Block::num_convs - 1>>
struct block_layers;
template <Shape S, class Block, class B, std::size_t... R>
struct block_layers<S, Block, B, std::index_sequence<R...>> {
  template <std::size_t>
  using repeated = block_conv<Block, Block::out_channels, S.h, S.w, B>;
  using type = std::tuple<block_conv<Block, Block::in_channels, S.h, S.w, B>, repeated<R>...,
                          MaxPool2x2<Block::out_channels, S.h, S.w, B>>;
};

template <Shape Features, class Head, class B>
struct head_layers_of;
template <Shape Features, class Head, class B>
  requires(!Head::torchvision)
struct head_layers_of<Features, Head, B> {
  static constexpr std::size_t first_linear = 1;  // Flatten, then the first Linear
  using type = std::tuple<Flatten<Features, B>, Linear<int(Features.size()), Head::hidden, true, B>,
                               Dropout<Head::hidden, Head::dropout, B>, Linear<Head::hidden, Head::hidden, true, B>,
                               Dropout<Head::hidden, Head::dropout, B>, Linear<Head::hidden, Head::classes, false, B>>;
};
/// torchvision: AdaptiveAvgPool2d, then torch.flatten (no module), then the same Linear/Dropout stack.
template <Shape Features, class Head, class B>
  requires(Head::torchvision)
struct head_layers_of<Features, Head, B> {
  static constexpr Shape pooled{Features.c, Head::pool, Head::pool};
  static constexpr std::size_t first_linear = 2;  // AdaptiveAvgPool2d, Flatten, then the first Linear
  using type = std::tuple<AdaptiveAvgPool2d<Features, Head::pool, Head::pool, B>, Flatten<pooled, B, 0>,
                          Linear<int(pooled.size()), Head::hidden, true, B>, Dropout<Head::hidden, Head::dropout, B>,
                          Linear<Head::hidden, Head::hidden, true, B>, Dropout<Head::hidden, Head::dropout, B>,
                          Linear<Head::hidden, Head::classes, false, B>>;
};
template <Shape Features, class Head, class B>
using head_layers = typename head_layers_of<Features, Head, B>::type;

/// Everything derived from a valid pack: stage shapes and the flat layer tuple.
template <class InputT, class BlocksTuple, class Head>
struct network_spec;
template <class InputT, class... Blocks, class Head>
struct network_spec<InputT, std::tuple<Blocks...>, Head> {
  static constexpr std::size_t num_blocks = sizeof...(Blocks);
  static constexpr auto shapes = stage_shapes<InputT::shape, Blocks...>();
  static constexpr Shape feature_shape = shapes[num_blocks];
  static constexpr int num_classes = Head::classes;
  static constexpr bool torchvision = Head::torchvision;
  using head = Head;

  template <class B, std::size_t... I>
  static auto all_layers(std::index_sequence<I...>)
      -> decltype(std::tuple_cat(std::declval<typename block_layers<shapes[I], Blocks, B>::type>()...,
                                 std::declval<head_layers<feature_shape, Head, B>>()));
  template <class B>
  using layers = decltype(all_layers<B>(std::index_sequence_for<Blocks...>{}));

  /// "Input<1,32,32> VggBlock<1,1,4> ... Classifier<256,10,0.5>": written into checkpoints.
  static std::string architecture() {
    std::ostringstream os;
    os << "Input<" << InputT::shape.c << ',' << InputT::shape.h << ',' << InputT::shape.w << '>';
    ((os << " VggBlock<" << Blocks::num_convs << ',' << Blocks::in_channels << ',' << Blocks::out_channels
         << (Blocks::batch_norm ? ",BatchNorm>" : ">")),
     ...);
    if constexpr (Head::torchvision)
      os << " TorchvisionClassifier<" << Head::hidden << ',' << Head::classes << ',' << Head::pool << ','
         << Head::dropout << '>';
    else
      os << " Classifier<" << Head::hidden << ',' << Head::classes << ',' << Head::dropout << '>';
    return os.str();
  }
};

/// Stand-in used after a failed rule, so that one mistake gives one message, not a cascade.
using fallback_spec = network_spec<Input<1, 2, 2>, std::tuple<VggBlock<1, 1, 1>>, Classifier<1, 1>>;

template <class... Arch>
struct select_spec {
  using parsed = parse_arch<Arch...>;
  static constexpr bool chain_ok =
      std::conditional_t<parsed::shape_ok,
                         chain_checks<typename parsed::first, typename parsed::blocks, typename parsed::last>,
                         std::false_type>::value;
  using type = std::conditional_t<parsed::shape_ok && chain_ok,
                                  network_spec<typename parsed::first, typename parsed::blocks, typename parsed::last>,
                                  fallback_spec>;
};

/// Floats of a layer's state beyond its parameters (0 for layers without).
template <class L>
inline constexpr long long state_size = 0;
template <class L>
  requires has_state<L>
inline constexpr long long state_size<L> = L::num_state;

/// Where a layer sits in PyTorch's module tree: group (block index, or num_blocks for "fc") and
/// the index of its first module inside that nn.Sequential.
struct LayerPlace {
  int group = 0;
  int position = 0;
};
template <class L>
inline constexpr bool is_adaptive_avg_pool = requires { requires L::is_adaptive_avg_pool; };

template <class LayersTuple, bool Torchvision = false>
struct layer_places;
template <class... L>
struct layer_places<std::tuple<L...>, false> {
  static constexpr std::array<LayerPlace, sizeof...(L)> value = [] {
    std::array<LayerPlace, sizeof...(L)> places{};
    int group = 0, position = 0;
    std::size_t i = 0;
    ((places[i++] = {group, position}, position += L::torch_modules,
      L::ends_block ? (++group, position = 0) : 0),
     ...);
    return places;
  }();
};
/// torchvision's tree: every block layer in `features` (group 0, numbered across blocks), the
/// adaptive pool as the top-level `avgpool` (group 1, position -1: no index), the rest in
/// `classifier` (group 2, numbered from 0).
template <class... L>
struct layer_places<std::tuple<L...>, true> {
  static constexpr std::array<LayerPlace, sizeof...(L)> value = [] {
    std::array<LayerPlace, sizeof...(L)> places{};
    int group = 0, position = 0;
    std::size_t i = 0;
    ((is_adaptive_avg_pool<L> ? (places[i++] = {1, -1}, group = 2, position = 0)
                              : (places[i++] = {group, position}, position += L::torch_modules)),
     ...);
    return places;
  }();
};

/// The module-group names of each layout (the state_dict prefixes): a table, not code in layers.
/// The chapter's: vgg_block_1 .. vgg_block_N, then fc. torchvision's: features, avgpool, classifier.
inline constexpr std::array<const char*, 3> kTorchvisionGroupNames{"features", "avgpool", "classifier"};
inline constexpr const char* kChapterBlockPrefix = "vgg_block_";
inline constexpr const char* kChapterHeadName = "fc";

}  // namespace detail

/// The network of the pack Arch... on backend B. Spelled vgg::Vgg<Arch...> for the CPU and
/// vgg::Vgg<Arch...>::on<B> for another backend.
template <class B, class... Arch>
class Network {
  static_assert(Backend<B>, "vgg::Network<B, ...>: B must be a backend type (see vgg/backend.hpp), such as "
                            "vgg::cpu::Backend or vgg::cuda::Backend.");
  using parsed = detail::parse_arch<Arch...>;
  static_assert(sizeof...(Arch) >= 3,
                "vgg::Vgg<...>: the pack must be vgg::Input<C, H, W>, then one or more "
                "vgg::VggBlock<NumConvs, In, Out>, then vgg::Classifier<Hidden, Classes>.");
  static_assert(sizeof...(Arch) < 1 || is_input<typename parsed::first>,
                "vgg::Vgg<...>: the first element of the pack must be vgg::Input<C, H, W>.");
  static_assert(sizeof...(Arch) < 2 || is_classifier<typename parsed::last>,
                "vgg::Vgg<...>: the last element of the pack must be vgg::Classifier<Hidden, Classes>.");

  using spec = typename detail::select_spec<Arch...>::type;

 public:
  using backend = B;
  using Context = typename B::Context;
  /// The same network on another backend, e.g. vgg::vgg11<...>::on<vgg::cuda::Backend>.
  template <class OtherBackend>
  using on = Network<OtherBackend, Arch...>;

  using layer_types = typename spec::template layers<B>;
  static constexpr std::size_t num_layers = std::tuple_size_v<layer_types>;
  static_assert([]<std::size_t... I>(std::index_sequence<I...>) {
    return (Layer<std::tuple_element_t<I, layer_types>> && ...);
  }(std::make_index_sequence<num_layers>{}), "vgg::Network: every layer type must satisfy vgg::Layer (layer.hpp)");
  static constexpr std::size_t num_blocks = spec::num_blocks;
  static constexpr Shape input_shape = spec::shapes[0];
  static constexpr Shape feature_shape = spec::feature_shape;
  /// The logits of one sample: classes x 1 x 1.
  static constexpr Shape output_shape = std::tuple_element_t<num_layers - 1, layer_types>::output_shape;
  static constexpr int num_classes = spec::num_classes;
  /// Layers of the feature extractor (the conv blocks); the head's first layer (Flatten, or
  /// torchvision's AdaptiveAvgPool2d) has this index.
  static constexpr std::size_t num_feature_layers = num_layers - std::tuple_size_v<detail::head_layers<feature_shape, typename spec::head, B>>;
  /// The classifier's first Linear: with frozen features, backward stops there.
  static constexpr std::size_t first_classifier_layer =
      num_feature_layers + detail::head_layers_of<feature_shape, typename spec::head, B>::first_linear;

  /// Output of block i (0-based; block i is named vgg_block_{i+1}). A bad index does not compile
  /// in a constant expression and throws std::out_of_range otherwise.
  static constexpr Shape block_output_shape(std::size_t i) {
    if (i >= num_blocks) throw std::out_of_range("vgg::Vgg::block_output_shape: block index out of range");
    return spec::shapes[i + 1];
  }

  /// Floats of state that are not parameters (batch norm's running statistics).
  static constexpr long long num_state = [] {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (0LL + ... + detail::state_size<std::tuple_element_t<I, layer_types>>);
    }(std::make_index_sequence<num_layers>{});
  }();

  static constexpr long long num_params = [] {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (0LL + ... + std::tuple_element_t<I, layer_types>::num_params);
    }(std::make_index_sequence<num_layers>{});
  }();
  /// Multiply-adds x 2 of one sample's forward pass.
  static constexpr double flops_per_sample = [] {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (0.0 + ... + std::tuple_element_t<I, layer_types>::flops_per_sample);
    }(std::make_index_sequence<num_layers>{});
  }();

  /// ensures: parameters initialised as PyTorch's defaults, reproducibly from `seed`; eval mode.
  explicit Network(std::uint64_t seed = 0) {
    reset_parameters(seed);
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((I < num_feature_layers ? std::get<I>(layers_).for_each_parameter([&](auto&&...) { ++num_feature_tensors_; })
                               : void()),
       ...);
    }(std::make_index_sequence<num_layers>{});
    // Where each layer's tensors and floats start in network order, for the backward hook.
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            tensor_begin_[I + 1] = tensor_begin_[I];
            float_begin_[I + 1] = float_begin_[I];
            std::get<I>(layers_).for_each_parameter(
                [&](int, const char*, const TensorShape&, std::span<float> value, std::span<float>) {
                  ++tensor_begin_[I + 1];
                  float_begin_[I + 1] += value.size();
                });
          }(),
          ...);
    }(std::make_index_sequence<num_layers>{});
  }
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;
  Network(Network&&) = default;
  Network& operator=(Network&&) = default;

  /// Re-draws every parameter (layer by layer, weights then biases) from `seed`.
  void reset_parameters(std::uint64_t seed) {
    seed_ = seed;
    step_ = 0;
    last_batch_ = 0;
    Rng rng(seed);
    std::apply([&](auto&... layer) { (layer.reset_parameters(rng, context_), ...); }, layers_);
  }

  /// Fine-tuning: with `frozen`, backward() stops at the classifier (no conv backward is computed)
  /// and optimizers leave the feature extractor's parameters alone. Forward passes are unchanged:
  /// in train mode batch norm still updates its running statistics, as PyTorch does for a module
  /// in train mode whose parameters have requires_grad=False.
  void freeze_features(bool frozen = true) {
    if (frozen == features_frozen_) return;
    features_frozen_ = frozen;
    backward_batch_ = backward_threads_ = 0;  // unfrozen layers need their backward buffers
    last_batch_ = 0;                          // the last pass's buffers may not have been reserved
  }
  bool features_frozen() const { return features_frozen_; }
  /// Whether parameter tensor `index` (network order, as for_each_parameter visits) is frozen.
  bool parameter_frozen(std::size_t index) const { return features_frozen_ && index < num_feature_tensors_; }

  void set_mode(Mode mode) { mode_ = mode; }
  void train() { mode_ = Mode::train; }
  void eval() { mode_ = Mode::eval; }
  Mode mode() const { return mode_; }

  /// Host threads used by every layer (CPU backends); 0 (the default) means OpenMP's maximum at the
  /// time of the pass, and more than Context::max_threads is capped there. Backends that run on a
  /// device use one host thread whatever is set.
  void set_threads(int threads) { context_.set_threads(threads < 0 ? 0 : threads); }
  int threads() const { return context_.threads(); }

  /// The backend's execution context (threads on the CPU; a stream and library handles on a GPU).
  Context& context() { return context_; }
  /// The backend's batch staging (stage() uses it; tests look at its transport).
  typename B::BatchStager& stager() { return stager_; }

  /// ensures: a forward pass of up to `batch` samples with the current thread count allocates nothing.
  /// throws: vgg::OutOfMemoryError naming the buffer, its layer and `batch` when B's memory runs out.
  void reserve(int batch) {
    const int t = threads();
    if (batch <= reserved_batch_ && t <= reserved_threads_) return;
    const int target = std::max(batch, reserved_batch_);
    BufferName reserving{"the network's input batch"};
    try {
      if constexpr (!B::host_memory) {
        input_.reserve(std::size_t(target) * input_shape.size());
        host_logits_.reserve(std::size_t(target) * std::size_t(num_classes));
      }
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (reserve_layer<I>(target, reserving), ...);
      }(std::make_index_sequence<num_layers>{});
    } catch (const OutOfMemoryError& e) {
      if (e.batch() > 0) throw;  // a layer said already
      throw e.for_batch(reserving.text(), target);
    }
    // Recorded last: after a failure, the next call tries again (grow-only buffers keep what was done).
    reserved_batch_ = target;
    reserved_threads_ = std::max(t, reserved_threads_);
  }

  /// Hands the next batch to the backend ahead of its forward pass: on a device backend it is
  /// copied into a pinned staging buffer and uploaded on a copy stream, overlapping the work already
  /// queued (the step in flight); on the CPU it is a view. Use: stage batch k+1 after step k, then
  /// forward(staged) (or train_step / evaluate_batch on it). Two slots are used in turn, so a
  /// StagedBatch stays usable until the second stage() after it.
  /// requires: labels.size() >= 1 and x.size() == labels.size() * input_shape.size() (else
  ///           std::invalid_argument); on the CPU, x and labels stay unchanged until that step is done.
  /// throws: vgg::OutOfMemoryError naming the staging buffers and the batch size.
  StagedBatch stage(std::span<const float> x, std::span<const std::int32_t> labels) {
    // The slot about to be refilled may hold the last pass's input: gone even if staging fails
    // (a buffer that grows frees its old memory first).
    if (stager_.next_slot() == input_slot_) input_overwritten_ = true;
    StagedBatch staged;
    for_batch(int(std::min<std::size_t>(labels.size(), std::size_t(INT_MAX))),
              [] { return std::string("the staging buffers of the next batch"); },
              [&] { staged = stager_.stage(context_, x, labels, input_shape.size()); });
    return staged;
  }

  /// Runs the network on a batch from stage(); as forward(x, batch) otherwise.
  /// requires: `staged` is the batch its slot holds (a later stage() into that slot invalidates it:
  ///           std::logic_error).
  LogitsView forward(const StagedBatch& staged) {
    return forward(staged, [](std::size_t, int) {});
  }
  template <class Observer>
  LogitsView forward(const StagedBatch& staged, Observer&& observer) {
    require_batch_size(staged.size, "forward");
    reserve(staged.size);
    const float* images = stager_.acquire(context_, staged);
    start_pass(staged.size, images);
    input_slot_ = staged.slot;
    return finish_pass(staged.size, observer);
  }

  /// Runs the network on `batch` samples stored contiguously as N x C x H x W.
  /// requires: x.size() == batch * input_shape.size(), batch >= 1 (else std::invalid_argument).
  /// ensures: returns batch x num_classes logits, valid until the next pass; no allocation when a
  ///          batch at least this large was seen before with the same thread count.
  LogitsView forward(std::span<const float> x, int batch) {
    return forward(x, batch, [](std::size_t, int) {});
  }
  LogitsView forward(const Tensor4& x) { return forward(checked_span(x), int(x.dimension(0))); }

  /// As forward, and calls observer(layer_index, batch) after each layer.
  template <class Observer>
  LogitsView forward(std::span<const float> x, int batch, Observer&& observer) {
    require_batch_size(batch, "forward");
    if (x.size() != std::size_t(batch) * input_shape.size())
      throw std::invalid_argument("vgg::Vgg::forward: a batch of " + std::to_string(batch) + " samples of shape " +
                                  to_string(input_shape) + " needs " +
                                  std::to_string(std::size_t(batch) * input_shape.size()) + " floats, found " +
                                  std::to_string(x.size()));
    reserve(batch);
    if constexpr (B::host_memory) {
      start_pass(batch, x.data());
    } else {
      B::copy_from_host(x.data(), input_.data(), x.size(), context_);
      start_pass(batch, input_.data());
    }
    return finish_pass(batch, observer);
  }

  /// Softmax cross-entropy of the last forward pass's logits against `labels` (mean over the batch,
  /// as torch.nn.CrossEntropyLoss), computed by the backend where the logits live; with gradient,
  /// also writes output_gradient() (the gradient with respect to the logits) for backward().
  /// requires: a forward pass was run; labels.size() == last_batch(); every label in
  ///           [0, num_classes) (else std::invalid_argument naming the sample and the label).
  LossResult loss(std::span<const std::int32_t> labels, bool gradient = true) {
    require_forward("loss");
    if (labels.size() != std::size_t(last_batch_))
      throw std::invalid_argument("vgg::Vgg::loss: " + std::to_string(labels.size()) + " labels for a batch of " +
                                  std::to_string(last_batch_) + " samples");
    float* grad = gradient ? output_gradient().data() : nullptr;
    return B::softmax_cross_entropy(context_, activations_[num_layers], labels, num_classes, grad);
  }

  /// The gradient of the loss with respect to the logits of the last forward pass, batch x classes,
  /// in the backend's memory, for the caller to fill (loss() does) before backward().
  /// requires: a forward pass was run. ensures: allocates only the first time a batch this large is seen.
  std::span<float> output_gradient() {
    require_forward("output_gradient");
    reserve_backward();
    return {grads_[num_layers - 1].data(), std::size_t(last_batch_) * std::size_t(num_classes)};
  }

  /// Back-propagates output_gradient() through the last forward pass (in its mode: dropout masks
  /// are replayed in train mode, dropout is the identity in eval mode) and sets every parameter's
  /// gradient (set, not accumulated). With input_gradient, also computes the gradient with respect
  /// to the input batch. requires: the input of that forward pass is still alive and unchanged.
  void backward(bool input_gradient = false) {
    require_forward("backward");
    if (input_gradient && features_frozen_)
      throw std::logic_error("vgg::Vgg::backward: the input gradient needs the conv backward pass, which frozen "
                             "features skip; call freeze_features(false) first");
    if (input_overwritten_)
      throw std::logic_error("vgg::Vgg::backward: the staged batch of the last forward pass was overwritten by a "
                             "later stage(); stage the next batch after the backward pass of this one");
    reserve_backward();
    if (input_gradient)
      for_batch(last_batch_, [] { return std::string("the gradient of the input batch"); },
                [&] { input_grad_.reserve(std::size_t(last_batch_) * input_shape.size()); });
    float* g = grads_[num_layers - 1].data();
    backward_layers(g, input_gradient, std::make_index_sequence<num_layers>{});
    has_input_gradient_ = input_gradient;
  }

  /// Runs hook after each parameterised layer's backward (backward_hook.hpp), from the next
  /// backward() on; BackwardHook{} removes it. Frozen features are not differentiated, so their
  /// layers are not reported. The caller keeps hook.self alive while the hook is set.
  void set_backward_hook(BackwardHook hook) { hook_ = hook; }
  BackwardHook backward_hook() const { return hook_; }

  /// The gradient with respect to the input of the last backward(true), batch x C x H x W, in the
  /// backend's memory.
  std::span<const float> input_gradient() const {
    if (!has_input_gradient_)
      throw std::logic_error("vgg::Vgg::input_gradient: call backward(/*input_gradient=*/true) first");
    return {input_grad_.data(), std::size_t(last_batch_) * input_shape.size()};
  }

  /// Batch size of the last forward pass (0 before any).
  int last_batch() const { return last_batch_; }

  /// Visits (value, grad) of every parameter tensor in network order, without allocating: for
  /// optimizers, which run every step (they skip parameter_frozen tensors, whose grad may be empty
  /// or stale). Both are in the backend's memory; grad is empty before the first backward pass.
  /// f is called through a FunctionRef (function_ref.hpp): its body is compiled once, not per layer.
  template <class F>
  void for_each_parameter_data(F&& f) {
    visit_parameter_data(FunctionRef<void(std::span<float>, std::span<float>)>(f));
  }

  /// Visits every parameter tensor with its state_dict name, in network order (value and grad in the
  /// backend's memory: see copy_parameters_to_host for a host copy).
  template <class F>
  void for_each_parameter(F&& f) {
    visit_parameters(FunctionRef<void(const ParameterView&)>(f));
  }

  /// Visits every state tensor that is not a parameter (batch norm's running_mean and running_var)
  /// with its state_dict name, in network order; values in the backend's memory. Optimizers never
  /// see these; checkpoints save and load them.
  template <class F>
  void for_each_state(F&& f) {
    visit_states(FunctionRef<void(const StateView&)>(f));
  }
  /// Visits every integer counter of the state (batch norm's num_batches_tracked), on the host.
  template <class F>
  void for_each_counter(F&& f) {
    visit_counters(FunctionRef<void(const CounterView&)>(f));
  }

  /// Copies every parameter, in network order (as for_each_parameter visits them), into `host`:
  /// how checkpoints read a network whatever its backend.
  /// requires: host.size() == num_params (else std::invalid_argument).
  void copy_parameters_to_host(std::span<float> host) {
    check_parameter_count(host.size(), "copy_parameters_to_host");
    std::size_t offset = 0;
    for_each_parameter_data([&](std::span<float> value, std::span<float>) {
      B::copy_to_host(value.data(), host.data() + offset, value.size(), context_);
      offset += value.size();
    });
  }
  /// Sets every parameter from `host`, in network order: how checkpoints load a network.
  /// requires: host.size() == num_params (else std::invalid_argument).
  void copy_parameters_from_host(std::span<const float> host) {
    check_parameter_count(host.size(), "copy_parameters_from_host");
    std::size_t offset = 0;
    for_each_parameter_data([&](std::span<float> value, std::span<float>) {
      B::copy_from_host(host.data() + offset, value.data(), value.size(), context_);
      offset += value.size();
    });
  }

  /// Visits every PyTorch module the network stands for: f(group_name, position, description).
  template <class F>
  static void for_each_module(F&& f) {
    for_each_module_impl(f, std::make_index_sequence<num_layers>{});
  }

  /// The pack written as text, e.g. "Input<1,224,224> VggBlock<1,1,8> ... Classifier<512,10,0.5>".
  static std::string architecture() { return spec::architecture(); }

  /// true for torchvision's module tree (features / avgpool / classifier), false for the chapter's.
  static constexpr bool torchvision_layout = spec::torchvision;

  static std::string group_name(int group) {
    if constexpr (torchvision_layout) return detail::kTorchvisionGroupNames[std::size_t(group)];
    return group < int(num_blocks) ? detail::kChapterBlockPrefix + std::to_string(group + 1)
                                   : std::string(detail::kChapterHeadName);
  }
  static constexpr detail::LayerPlace layer_place(std::size_t i) { return places[i]; }

  template <std::size_t I>
  auto& layer() {
    return std::get<I>(layers_);
  }
  std::uint64_t seed() const { return seed_; }
  /// Training forward passes so far: dropout masks derive from (seed, step). Checkpoints store it.
  std::uint64_t step() const { return step_; }
  void set_step(std::uint64_t step) { step_ = step; }
  /// Sets the seed that dropout masks derive from, leaving the parameters alone (used on resume).
  void set_seed(std::uint64_t seed) { seed_ = seed; }

 private:
  static constexpr auto places = detail::layer_places<layer_types, spec::torchvision>::value;

  /// The state_dict name of a tensor of layer I's module `module` (counted from its first).
  template <std::size_t I>
  static std::string tensor_name(int module, const char* suffix) {
    return group_name(places[I].group) + "." + std::to_string(places[I].position + module) + "." + suffix;
  }
  template <std::size_t I, class F>
  void visit_layer_state(F& f) {
    if constexpr (has_state<std::tuple_element_t<I, layer_types>>)
      std::get<I>(layers_).for_each_state([&](int module, const char* suffix, const TensorShape& shape,
                                              std::span<float> value) {
        f(StateView{tensor_name<I>(module, suffix), shape.to_vector(), value});
      });
  }
  template <std::size_t I, class F>
  void visit_layer_counters(F& f) {
    if constexpr (has_state<std::tuple_element_t<I, layer_types>>)
      std::get<I>(layers_).for_each_counter([&](int module, const char* suffix, std::int64_t& value) {
        f(CounterView{tensor_name<I>(module, suffix), &value});
      });
  }

  static std::string to_string(Shape s) {
    std::ostringstream os;
    os << s;
    return os.str();
  }

  std::span<const float> checked_span(const Tensor4& x) const {
    const Shape found{int(x.dimension(1)), int(x.dimension(2)), int(x.dimension(3))};
    if (found != input_shape || x.dimension(0) < 1) {
      std::ostringstream os;
      os << "vgg::Vgg::forward: the input batch has shape [" << x.dimension(0) << ", " << x.dimension(1) << ", "
         << x.dimension(2) << ", " << x.dimension(3) << "] but the network expects [N, " << input_shape.c << ", "
         << input_shape.h << ", " << input_shape.w << "] with N >= 1";
      throw std::invalid_argument(os.str());
    }
    return {x.data(), std::size_t(x.size())};
  }

  static void require_batch_size(int batch, const char* what) {
    if (batch < 1)
      throw std::invalid_argument(std::string("vgg::Vgg::") + what + ": the batch size must be at least 1, found " +
                                  std::to_string(batch));
  }

  /// The bookkeeping of a forward pass whose input (in B's memory) is `input`.
  void start_pass(int batch, const float* input) {
    last_ctx_ = RunContext{mode_, seed_, step_, 0};
    last_threads_ = threads();
    last_batch_ = batch;
    input_slot_ = -1;
    input_overwritten_ = false;
    if (mode_ == Mode::train) ++step_;  // the next training pass draws new dropout masks
    activations_[0] = input;
  }
  template <class Observer>
  LogitsView finish_pass(int batch, Observer& observer) {
    run_layers(batch, last_ctx_, observer, std::make_index_sequence<num_layers>{});
    const std::size_t logits = std::size_t(batch) * std::size_t(num_classes);
    if constexpr (B::host_memory) {
      return LogitsView(activations_[num_layers], batch, num_classes);
    } else {
      B::copy_to_host(activations_[num_layers], host_logits_.data(), logits, context_);
      return LogitsView(host_logits_.data(), batch, num_classes);
    }
  }

  /// Which buffer is being reserved, for an out-of-memory message: set before each allocation,
  /// turned into text only on failure (one try per reservation, not one per layer: cheap to compile).
  struct BufferName {
    const char* what = "";
    long layer = -1;  ///< -1: the network's own buffer
    /// "the output of layer 3 (vgg_block_2.0)": the index and the module in PyTorch's tree.
    std::string text() const {
      if (layer < 0) return what;
      const auto place = places[std::size_t(layer)];
      return std::string(what) + " of layer " + std::to_string(layer) + " (" + group_name(place.group) +
             (place.position < 0 ? std::string() : "." + std::to_string(place.position)) + ")";
    }
  };

  template <std::size_t I>
  void reserve_layer(int batch, BufferName& reserving) {
    using L = std::tuple_element_t<I, layer_types>;
    reserving = {"the workspace", long(I)};
    if constexpr (pool_runs_inside_previous<I + 1>()) {
      // Its output is never stored: the fused pool's state, kept by the layer, stands for it.
      std::get<I>(layers_).reserve(context_, batch, /*pooled=*/true);
    } else {
      std::get<I>(layers_).reserve(context_, batch);
      if (!L::is_identity(Mode::train) || !L::is_identity(Mode::eval)) {
        reserving = {"the output", long(I)};
        outputs_[I].reserve(std::size_t(batch) * L::output_shape.size());
      }
    }
  }

  template <class Observer, std::size_t... I>
  void run_layers(int batch, RunContext ctx, Observer& observer, std::index_sequence<I...>) {
    ((activations_[I + 1] = run_layer<I>(activations_[I], batch, ctx), observer(I, batch)), ...);
  }

  /// True when layer I is a 2x2 max-pool that layer I - 1 computes inside its own forward pass
  /// (while its output is still in cache), so that layer I's forward has nothing left to do.
  template <std::size_t I>
  static constexpr bool pool_runs_inside_previous() {
    if constexpr (I == 0 || I >= num_layers) {
      return false;
    } else {
      return pool_runs_inside<std::tuple_element_t<I - 1, layer_types>, std::tuple_element_t<I, layer_types>>;
    }
  }

  template <std::size_t I>
  const float* run_layer(const float* in, int batch, RunContext& ctx) {
    using L = std::tuple_element_t<I, layer_types>;
    if (L::is_identity(ctx.mode)) return in;
    ctx.layer_index = I;
    if constexpr (pool_runs_inside_previous<I>()) {
      // computed by layer I - 1
    } else if constexpr (pool_runs_inside_previous<I + 1>()) {
      // Layer I writes the pool's output and keeps its own state; its own output is never stored.
      std::get<I>(layers_).forward_pooled(context_, in, outputs_[I + 1].data(), batch, ctx);
      return nullptr;
    } else {
      std::get<I>(layers_).forward(context_, in, outputs_[I].data(), batch, ctx);
    }
    return outputs_[I].data();
  }

  static void check_parameter_count(std::size_t found, const char* what) {
    if (found != std::size_t(num_params))
      throw std::invalid_argument(std::string("vgg::Vgg::") + what + ": the network has " + std::to_string(num_params) +
                                  " parameters, the host buffer holds " + std::to_string(found));
  }

  void require_forward(const char* what) const {
    if (last_batch_ == 0)
      throw std::logic_error(std::string("vgg::Vgg::") + what + ": no forward pass to differentiate; call forward first");
  }

  void reserve_backward() {
    if (last_batch_ <= backward_batch_ && last_threads_ <= backward_threads_) return;
    const int target = std::max(backward_batch_, last_batch_);
    BufferName reserving;
    try {
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (reserve_backward_layer<I>(target, reserving), ...);
      }(std::make_index_sequence<num_layers>{});
    } catch (const OutOfMemoryError& e) {
      if (e.batch() > 0) throw;
      throw e.for_batch(reserving.text(), target);
    }
    backward_batch_ = target;
    backward_threads_ = std::max(backward_threads_, last_threads_);
  }

  template <std::size_t I>
  void reserve_backward_layer(int batch, BufferName& reserving) {
    if (features_frozen_ && I < first_classifier_layer) return;  // never differentiated
    reserving = {"the backward workspace", long(I)};
    if constexpr (pool_runs_inside_previous<I + 1>()) {
      // Differentiated from the pooled gradient: no gradient of its full-size output.
      std::get<I>(layers_).reserve_backward(context_, batch, /*pooled=*/true);
    } else {
      std::get<I>(layers_).reserve_backward(context_, batch);
      reserving = {"the output gradient", long(I)};
      grads_[I].reserve(std::size_t(batch) * std::tuple_element_t<I, layer_types>::output_shape.size());
    }
  }

  template <std::size_t... I>
  void backward_layers(float* g, bool input_gradient, std::index_sequence<I...>) {
    // Reverse order: layer num_layers - 1 - I.
    ((g = backward_layer<num_layers - 1 - I>(g, input_gradient)), ...);
  }

  template <std::size_t I>
  float* backward_layer(float* dy, bool input_gradient) {
    using L = std::tuple_element_t<I, layer_types>;
    if (L::is_identity(last_ctx_.mode)) return dy;  // output is input: dx is dy
    // Frozen features: the classifier's first Linear computes no input gradient, and the layers
    // before it (the conv blocks, the adaptive pool, Flatten) are not differentiated at all.
    if (features_frozen_ && I < first_classifier_layer) return nullptr;
    float* dx = nullptr;
    if (features_frozen_ && I == first_classifier_layer) {
      dx = nullptr;
    } else if constexpr (I > 0) {
      dx = grads_[I - 1].data();
    } else {
      if (input_gradient) dx = input_grad_.data();
    }
    RunContext ctx = last_ctx_;
    ctx.layer_index = I;
    if constexpr (pool_runs_inside_previous<I>()) {
      return dy;  // layer I - 1 differentiates through this pool from the pooled gradient
    } else if constexpr (pool_runs_inside_previous<I + 1>()) {
      std::get<I>(layers_).backward_pooled(context_, activations_[I], dy, dx, last_batch_, ctx);
    } else {
      std::get<I>(layers_).backward(context_, activations_[I], activations_[I + 1], dy, dx, last_batch_, ctx);
    }
    if constexpr (L::num_params > 0) {
      if (hook_) hook_.call(hook_.self, FinishedGradients{I, tensor_begin_[I], tensor_begin_[I + 1], float_begin_[I],
                                                          float_begin_[I + 1]});
    }
    return dx;
  }

  // The visitors' expansions over the layers, one per network type (not per callback type).
  VGG_NOT_SPECIALISED void visit_parameter_data(FunctionRef<void(std::span<float>, std::span<float>)> f) {
    std::apply([&](auto&... layer) {
      (layer.for_each_parameter([&](int, const char*, const TensorShape&, std::span<float> value, std::span<float> grad) {
        f(value, grad);
      }),
       ...);
    }, layers_);
  }
  VGG_NOT_SPECIALISED void visit_parameters(FunctionRef<void(const ParameterView&)> f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (std::get<I>(layers_).for_each_parameter(
           [&](int module, const char* suffix, const TensorShape& shape, std::span<float> value, std::span<float> grad) {
             f(ParameterView{tensor_name<I>(module, suffix), shape.to_vector(), value, grad});
           }),
       ...);
    }(std::make_index_sequence<num_layers>{});
  }
  VGG_NOT_SPECIALISED void visit_states(FunctionRef<void(const StateView&)> f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (visit_layer_state<I>(f), ...); }(std::make_index_sequence<num_layers>{});
  }
  VGG_NOT_SPECIALISED void visit_counters(FunctionRef<void(const CounterView&)> f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (visit_layer_counters<I>(f), ...); }(std::make_index_sequence<num_layers>{});
  }

  template <class F, std::size_t... I>
  static void for_each_module_impl(F& f, std::index_sequence<I...>) {
    (
        [&] {
          int position = places[I].position;
          std::tuple_element_t<I, layer_types>::describe(
              [&](const std::string& text) { f(group_name(places[I].group), position++, text); });
        }(),
        ...);
  }

  template <class T>
  using Memory = typename B::template Buffer<T>;

  Context context_;
  typename B::BatchStager stager_;  // the staged batches (stage / forward(StagedBatch))
  layer_types layers_;
  // Output of layer i (unused for identity layers, and for a conv whose pool runs inside it).
  std::array<Memory<float>, num_layers> outputs_;
  std::array<Memory<float>, num_layers> grads_;  // gradient w.r.t. the output of layer i
  Memory<float> input_grad_;
  Memory<float> input_;       // the batch in the backend's memory (device backends only)
  Buffer<float> host_logits_;  // the logits copied to the host (device backends only)
  std::array<const float*, num_layers + 1> activations_{};  // input of layer i; [num_layers] = logits
  RunContext last_ctx_{};
  int last_batch_ = 0, last_threads_ = 0;
  bool has_input_gradient_ = false;
  int input_slot_ = -1;             // the staging slot of the last pass's input (-1: not staged)
  bool input_overwritten_ = false;  // a stage() has refilled that slot since
  int reserved_batch_ = 0, reserved_threads_ = 0, backward_batch_ = 0, backward_threads_ = 0;
  Mode mode_ = Mode::eval;
  std::uint64_t seed_ = 0, step_ = 0;
  bool features_frozen_ = false;
  std::size_t num_feature_tensors_ = 0;  // parameter tensors of the feature layers, which come first
  // Layer i's parameters are tensors [tensor_begin_[i], tensor_begin_[i + 1]), floats likewise.
  std::array<std::size_t, num_layers + 1> tensor_begin_{}, float_begin_{};
  BackwardHook hook_{};
};

/// The network of the pack Arch... on the default backend (the CPU, default_backend.hpp).
template <class... Arch>
using Vgg = Network<DefaultBackend, Arch...>;

}  // namespace vgg
