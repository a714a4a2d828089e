#pragma once
// Compile-time rules for a Vgg<...> pack. Each rule is a static_assert whose message is a
// sentence; where numbers matter they travel in the template arguments of the check
// (e.g. check_block_channels<block_number{2}, previous_channels{64}, declared_in{32}>), which the
// compiler prints in the "in instantiation of" line right above the message.

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "vgg/block.hpp"
#include "vgg/classifier.hpp"
#include "vgg/shape.hpp"

namespace vgg::detail {

struct block_number { int value; };       // 1-based, as in the name vgg_block_1
struct pack_position { int value; };      // 1-based position inside Vgg<...>
struct previous_channels { int value; };  // channels produced by the stage before the block
struct declared_in { int value; };        // the block's In
struct input_height { int value; };       // the block's input height
struct input_width { int value; };        // the block's input width

template <pack_position P, bool IsBlock>
struct check_stage_is_block {
  static_assert(IsBlock,
                "vgg::Vgg<...>: every element between vgg::Input and vgg::Classifier must be a "
                "vgg::VggBlock<NumConvs, In, Out>; the pack position of the offending element is in the "
                "template arguments of this check.");
  static constexpr bool value = IsBlock;
};

template <block_number B, previous_channels Previous, declared_in In>
struct check_block_channels {
  static_assert(Previous.value == In.value,
                "vgg::Vgg<...>: a VggBlock's In must equal the channel count of the stage before it (the "
                "Input's C for vgg_block_1, the previous block's Out otherwise); the block number and both "
                "channel counts are in the template arguments of this check.");
  static constexpr bool value = Previous.value == In.value;
};

template <block_number B, input_height H, input_width W, bool FirstFailure>
struct check_block_pool {
  static_assert(!FirstFailure,
                "vgg::Vgg<...>: the input is too small for the pools: this VggBlock's 2x2 max-pool would "
                "produce an empty (0-pixel) output; use a larger vgg::Input or fewer blocks. The block number "
                "and its input height and width are in the template arguments of this check.");
  static constexpr bool value = !FirstFailure;
};

/// Sample shapes between stages: [0] is the input, [i + 1] the output of block i.
template <Shape In, class... Blocks>
constexpr std::array<Shape, sizeof...(Blocks) + 1> stage_shapes() {
  std::array<Shape, sizeof...(Blocks) + 1> s{};
  s[0] = In;
  std::size_t i = 0;
  ((s[i + 1] = Blocks::output_shape(s[i]), ++i), ...);
  return s;
}

template <class InputT, class BlocksTuple, class Head>
struct chain_checks;
template <class InputT, class... Blocks, class Head>
struct chain_checks<InputT, std::tuple<Blocks...>, Head> {
  static constexpr auto shapes = stage_shapes<InputT::shape, Blocks...>();
  static constexpr int first_pool_failure = [] {
    for (std::size_t i = 0; i < sizeof...(Blocks); ++i)
      if (shapes[i].h < 2 || shapes[i].w < 2) return int(i);
    return -1;
  }();
  template <std::size_t... I>
  static constexpr bool run(std::index_sequence<I...>) {
    using blocks = std::tuple<Blocks...>;
    const bool channels =
        (true & ... &
         check_block_channels<block_number{int(I) + 1}, previous_channels{I == 0 ? InputT::shape.c : shapes[I].c},
                              declared_in{std::tuple_element_t<I, blocks>::in_channels}>::value);
    const bool pools = (true & ... &
                        check_block_pool<block_number{int(I) + 1}, input_height{shapes[I].h},
                                         input_width{shapes[I].w}, int(I) == first_pool_failure>::value);
    return channels && pools;
  }
  static constexpr bool value = run(std::index_sequence_for<Blocks...>{});
};

/// Splits Vgg<Arch...> into Input, the tuple of blocks and the Classifier, and checks the shape of
/// the pack. Holds no numbers of its own beyond what the pack says.
template <class... Arch>
struct parse_arch {
  static constexpr std::size_t size = sizeof...(Arch);
  using padded = std::tuple<Arch..., void, void>;
  using first = std::tuple_element_t<0, padded>;
  using last = std::tuple_element_t<(size == 0 ? 0 : size - 1), padded>;
  template <std::size_t... I>
  static auto middle(std::index_sequence<I...>) -> std::tuple<std::tuple_element_t<I + 1, padded>...>;
  using blocks = decltype(middle(std::make_index_sequence<(size >= 2 ? size - 2 : 0)>{}));

  template <std::size_t... I>
  static constexpr bool middle_all_blocks(std::index_sequence<I...>) {
    return (true & ... &
            check_stage_is_block<pack_position{int(I) + 2}, is_vgg_block<std::tuple_element_t<I, blocks>>>::value);
  }
  static constexpr bool shape_ok = size >= 3 && is_input<first> && is_classifier<last> &&
                                   middle_all_blocks(std::make_index_sequence<std::tuple_size_v<blocks>>{});
};

}  // namespace vgg::detail
