#pragma once
// vgg::FunctionRef<R(Args...)>: a non-owning reference to any callable, called through one
// function pointer (as C++26's std::function_ref). The network's visitors take their callback
// through it: a visitor's body is then compiled once per network, not once per layer of the flat
// pack (the fold over the layers inlined it into every layer's expansion, which made the
// per-network glue of checkpoints, health checks and optimizers most of a tool's compile time).
// It never allocates; the callable must outlive the call it is passed to.

#include <memory>
#include <type_traits>
#include <utility>

// On a function that takes a FunctionRef: neither inlined nor specialised for the callable it is
// given (GCC's interprocedural constant propagation would otherwise see the call pointer and
// inline the callable into every layer again).
#if defined(__GNUC__) && !defined(__clang__)
#define VGG_NOT_SPECIALISED [[gnu::noipa]]
#else
#define VGG_NOT_SPECIALISED [[gnu::noinline]]
#endif

namespace vgg {

template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  /// requires: f outlives every call through this reference.
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor): passed where a callable is
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace vgg
