#pragma once
// The CPU backend: host memory, OpenMP threads, and the kernels of cpu/ on one of two paths
// (kernel_path.hpp). vgg::cpu::Backend takes the fastest path compiled in (the network's default);
// vgg::cpu::PlainBackend takes the plain one on every target, the reference the tests compare
// against. Both share memory (Device::cpu), so they run side by side in one program.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "vgg/backend.hpp"
#include "vgg/buffer.hpp"
#include "vgg/cpu/batchnorm.hpp"
#include "vgg/cpu/conv3x3.hpp"
#include "vgg/cpu/dropout.hpp"
#include "vgg/cpu/kernel_path.hpp"
#include "vgg/cpu/linear.hpp"
#include "vgg/cpu/adam.hpp"
#include "vgg/cpu/adaptive_avgpool.hpp"
#include "vgg/cpu/maxpool.hpp"
#include "vgg/cpu/parallel.hpp"
#include "vgg/cpu/winograd.hpp"
#include "vgg/elementwise.hpp"
#include "vgg/loss.hpp"
#include "vgg/precision.hpp"

namespace vgg::cpu {

/// The execution context of the CPU backend: how many OpenMP threads its kernels use, and the
/// precision of their convolution and linear products.
class Context {
 public:
  /// bf16 runs where the CPU has AVX512-BF16 (chosen by cpuid, at run time) and the fast kernel path
  /// is built; elsewhere the products stay fp32, and precision_in_use() says so.
  void set_precision(Precision p) { precision_ = p; }
  Precision precision() const { return precision_; }
  Precision precision_in_use() const {
    return precision_ == Precision::bf16 && kFastKernels && bf16::bf16_gemm_available() ? Precision::bf16
                                                                                       : Precision::fp32;
  }
  /// Why bf16 is not in use although asked for; empty when it is, or when fp32 was asked for.
  std::string precision_note() const {
    if (precision_ != Precision::bf16 || precision_in_use() == Precision::bf16) return {};
    if (!kFastKernels) return "bf16 needs the AVX-512 kernel path, which this build lacks; running fp32";
    return "this CPU has no AVX512-BF16 (" + describe() + "); running fp32";
  }

  /// Whether the wide conv layers may run by Winograd F(2x2, 3x3) where the backend's rule picks them
  /// (on by default); off, every conv layer takes the direct path (the tests and benchmarks compare
  /// the two this way).
  void set_winograd(bool allowed) { winograd_ = allowed; }
  bool winograd() const { return winograd_; }

  /// The most threads a network accepts: more than any machine this library targets has cores,
  /// and few enough that per-thread work buffers stay bounded.
  static constexpr int max_threads = 256;

  /// 0 (the default) means OpenMP's maximum at the time of each pass; larger than max_threads is capped.
  void set_threads(int threads) { threads_ = std::clamp(threads, 0, max_threads); }
  int threads() const { return threads_ > 0 ? threads_ : std::min(default_threads(), max_threads); }

 private:
  int threads_ = 0;
  Precision precision_ = Precision::fp32;
  bool winograd_ = true;
};

template <KernelPath Path>
struct BasicBackend {
  static_assert(Path == KernelPath::plain || kFastKernels,
                "vgg::cpu::BasicBackend<KernelPath::avx512>: the AVX-512 kernels are not compiled into this program "
                "(the target lacks AVX-512, or VGG_PLAIN_KERNELS is defined); use vgg::cpu::Backend.");
  static constexpr KernelPath path = Path;
  static constexpr Device device = Device::cpu;
  static constexpr bool host_memory = true;
  static constexpr const char* name() {
    return Path == KernelPath::avx512 ? "cpu (AVX-512 kernels)" : "cpu (plain kernels)";
  }

  template <class T>
  using Buffer = vgg::Buffer<T>;
  using Context = cpu::Context;
  /// Batches are already in host memory: staging keeps a view (no copy).
  using BatchStager = BatchStaging<HostViewTransport<Context>>;

  static void copy_to_host(const float* src, float* dst, std::size_t count, Context&) {
    if (count) std::memcpy(dst, src, count * sizeof(float));
  }
  static void copy_from_host(const float* src, float* dst, std::size_t count, Context&) {
    if (count) std::memcpy(dst, src, count * sizeof(float));
  }

  /// Whether a layer runs by Winograd F(2x2, 3x3) (winograd.hpp): its forward (with a fused pool, in
  /// training writing the pool's winner masks too) and its input gradient; on the AVX-512 path only
  /// (the plain path stays the reference). A rule by channels (bench_winograd; docs/PERFORMANCE.md):
  /// every layer with C_in, C_out >= 256 measured 1.3-2.7x faster than the direct path on the Xeon
  /// and on the EPYC (Zen 5); 64-256 channels 1.6-1.7x on the Zen 5 EPYC, and the width/8 net's
  /// 16-64 channels 1.2-1.7x on the Zen 4 EPYC. With 8 input channels (the width/8 net's block 2) the transforms
  /// cost what the GEMM saves (1.0x), so such layers stay direct. Layers under 256 channels are not
  /// yet measured on the Xeon kind.
  static constexpr bool winograd_rule(const ConvShape& s) {
    return Path == KernelPath::avx512 && s.cin >= kWinogradMinChannels && s.cout >= kWinogradMinChannels;
  }
  static constexpr int kWinogradMinChannels = 16;
  /// Whether a layer's input gradient runs by Winograd: where winograd_rule takes the layer, and also
  /// with 8 input channels (the width/8 net's block 2), whose input gradient is a convolution of its
  /// 16 output channels into 8: that layer's backward 21.7 against 23.2 ms with the direct path's
  /// input gradient (bench_winograd pooled_backward w8_conv2, modes 2 and 1, Xeon), although its
  /// forward and weight gradient stay direct.
  static constexpr bool winograd_input_grad_rule(const ConvShape& s) {
    return winograd_rule(s) || (Path == KernelPath::avx512 && s.cin >= 8 && s.cout >= kWinogradMinChannels);
  }
  /// The tiles (2x2 outputs) a batch needs for a new filter transform to pay for itself in one call.
  /// Both the transform and what Winograd saves per tile grow with C_in x C_out, so the break-even is
  /// a tile count: 200-350 measured (bench_winograd: conv5 and conv7, forward and input gradient, on
  /// the EPYC, docs/PERFORMANCE.md), 512 for a margin. Full-width VGG-11 at batch 8: 28x28 layers 1568 tiles, 14x14 392.
  static constexpr long kWinogradAmortisingTiles = 512;

  /// Per-thread column slices, GEMM plans and partial gradients of one conv layer; for a layer the
  /// Winograd rule picks, also its transformed filters (cached) and chunk buffers.
  class ConvWorkspace {
   public:
    void reserve(const Context& ctx, const ConvShape& s, int /*batch*/) {
      ws_.reserve(geometry(s), ctx.threads());
      if (winograd_rule(s)) {
        filter_.reserve(s.cin, s.cout);
        winograd_ws_.reserve(winograd_geometry(s), ctx.threads());
        weights_seen_.reserve(std::size_t(9) * s.cin * s.cout);
        winograd_threads_ = std::max(winograd_threads_, ctx.threads());
        touch_winograd_buffers();
      }
    }
    /// Also the input gradient's filter (its chunk buffers share the forward's), and, with a pool,
    /// the full-size gradient behind it that the input gradient reads (the direct fused backward
    /// never stores it whole).
    void reserve_backward(const Context& ctx, const ConvShape& s, int batch, bool pooled) {
      ws_.reserve_backward(geometry(s), ctx.threads(), pooled);
      if (winograd_input_grad_rule(s)) {
        if (pooled) pooled_output_grads_.reserve(std::size_t(batch) * s.cout * s.h * s.w);
        input_grad_filter_.reserve(s.cout, s.cin);
        winograd_ws_.reserve(winograd_input_grad_geometry(winograd_geometry(s)), ctx.threads());
        weights_seen_.reserve(std::size_t(9) * s.cin * s.cout);
        input_grad_threads_ = std::max(input_grad_threads_, ctx.threads());
        if (winograd_rule(s) && winograd_geometry(s).weight_grad_fits(ctx.threads())) {
          winograd_ws_.reserve_weight_grad(winograd_geometry(s), ctx.threads());
          weight_grad_threads_ = std::max(weight_grad_threads_, ctx.threads());
        }
        touch_winograd_buffers();
      }
    }
    Conv3x3Workspace& get() { return ws_; }

    /// Whether a forward of this layer takes Winograd now; in bf16 mode (which runs only where the
    /// CPU has AVX512-BF16) its 16 GEMMs take bf16 operands (winograd_filter_to_bf16), and not at all
    /// where AMX takes the direct path's bf16 products (winograd_in_precision).
    bool use_winograd(const Context& ctx, const ConvShape& s) const {
      return winograd_rule(s) && ctx.winograd() && winograd_in_precision(ctx) && winograd_threads_ >= ctx.threads();
    }
    /// Whether an input gradient of this layer takes Winograd now; for a pooled layer, a batch of n
    /// (the full-size gradient behind the pool must fit). The 8-input-channel layers in fp32 only
    /// (where it was measured).
    bool use_winograd_input_grad(const Context& ctx, const ConvShape& s, bool pooled = false, int n = 0) const {
      return winograd_input_grad_rule(s) && (winograd_rule(s) || !uses_bf16(ctx)) && ctx.winograd() &&
             winograd_in_precision(ctx) && input_grad_threads_ >= ctx.threads() &&
             (!pooled || std::size_t(n) * s.cout * s.h * s.w <= pooled_output_grads_.capacity());
    }
    /// Whether this layer's weight and bias gradients take Winograd (winograd_conv3x3_weight_grad)
    /// along with its input gradient (so, by the same batch rule): in fp32 (bf16 mode keeps the
    /// direct path's bf16 products) and where the products' sums fit the cache (weight_grad_fits).
    bool use_winograd_weight_grad(const Context& ctx, const ConvShape& s) const {
      return winograd_rule(s) && !uses_bf16(ctx) && weight_grad_threads_ >= ctx.threads() &&
             winograd_geometry(s).weight_grad_fits(ctx.threads());
    }
    /// The filter transformed for `weight`, or null where the direct path is the faster choice for
    /// this call. The transform is redone only when the weights differ from the copy it was made from
    /// (the layer cannot see an optimizer step or a checkpoint load; memcmp is exact and 0.2 ms for
    /// 512 x 512, against 5-13 ms for a transform). Winograd runs where it pays: the batch holds
    /// kWinogradAmortisingTiles tiles, or, in eval, the weights are the same as at the previous call
    /// (an eval loop, which will reuse the transform). Training decides by the batch alone, so that
    /// its arithmetic never depends on what ran before (a resumed run equals an uninterrupted one
    /// byte for byte, although the uninterrupted one evaluated the same weights just before).
    /// With bf16, also its bf16 copy, made once per transform.
    const WinogradFilter<Path>* winograd_filter(const float* weight, const ConvShape& s, int n, int threads,
                                                Mode mode, bool bf16 = false) {
      const bool repeated = see_weights(weight, s);
      if (!amortised(s, n) && !(mode == Mode::eval && repeated)) return nullptr;
      if (!filter_valid_) {
        winograd_transform_filter(weight, filter_, threads);
        filter_valid_ = true;
      }
      if (bf16) ensure_bf16(filter_, threads);
      return &filter_;
    }
    /// The same for the input gradient's filter (rotated 180 degrees, channels swapped); made only
    /// for a batch that amortises it.
    const WinogradFilter<Path>* winograd_input_grad_filter(const float* weight, const ConvShape& s, int n,
                                                           int threads, bool bf16 = false) {
      see_weights(weight, s);
      if (!amortised(s, n)) return nullptr;
      if (!input_grad_filter_valid_) {
        winograd_transform_filter_input_grad(weight, input_grad_filter_, threads);
        input_grad_filter_valid_ = true;
      }
      if (bf16) ensure_bf16(input_grad_filter_, threads);
      return &input_grad_filter_;
    }
    /// The chunk buffers, set for this call's precision (bf16: the GEMMs on bf16 operands).
    WinogradWorkspace& winograd_workspace(bool bf16 = false) {
      winograd_ws_.bf16 = bf16;
      return winograd_ws_;
    }
    /// A pooled layer's gradient behind the pool and the ReLU, whole (n x cout x h x w).
    float* pooled_output_grads() { return pooled_output_grads_.data(); }

   private:
    static void ensure_bf16([[maybe_unused]] WinogradFilter<Path>& f, [[maybe_unused]] int threads) {
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
      if constexpr (Path == KernelPath::avx512)
        if (!f.has_bf16()) winograd_filter_to_bf16(f, threads);
#endif
    }
    /// Invalidates both transforms where `weight` differs from the copy they were made from; true
    /// where it does not (the same weights as at the previous call).
    bool see_weights(const float* weight, const ConvShape& s) {
      const std::size_t bytes = std::size_t(9) * s.cin * s.cout * sizeof(float);
      if (weights_valid_ && std::memcmp(weights_seen_.data(), weight, bytes) == 0) return true;
      std::memcpy(weights_seen_.data(), weight, bytes);
      weights_valid_ = true;
      filter_valid_ = input_grad_filter_valid_ = false;
      return false;
    }
    /// Writes every Winograd buffer once as it is reserved: a transform or chunk buffer first used
    /// batches later (a 14x14 layer starts Winograd at its second eval batch) then faults no page in
    /// a steady-state pass. The transforms are dropped (zeroed), to be redone where used.
    void touch_winograd_buffers() {
      auto touch = [](vgg::Buffer<float>& b) {
        if (b.capacity()) std::memset(b.data(), 0, b.capacity() * sizeof(float));
      };
      touch(filter_.storage());
      touch(input_grad_filter_.storage());
      for (auto* f : {&filter_, &input_grad_filter_}) {
        if (f->bf16_storage().capacity())
          std::memset(f->bf16_data(), 0, f->bf16_storage().capacity() * sizeof(std::uint32_t));
        f->set_has_bf16(false);
      }
      touch(weights_seen_);
      touch(pooled_output_grads_);
      for (auto& b : winograd_ws_.transformed_inputs) touch(b);
      for (auto& b : winograd_ws_.products) touch(b);
      for (auto& plan : winograd_ws_.plans) plan.touch();
      for (auto& b : winograd_ws_.weight_products) touch(b);
      for (auto& b : winograd_ws_.bias_lanes) touch(b);
      weights_valid_ = filter_valid_ = input_grad_filter_valid_ = false;
    }
    static bool amortised(const ConvShape& s, int n) {
      return long(n) * winograd_geometry(s).tiles_per_image() >= kWinogradAmortisingTiles;
    }

    Conv3x3Workspace ws_;
    WinogradFilter<Path> filter_, input_grad_filter_;
    WinogradWorkspace winograd_ws_;
    vgg::Buffer<float> weights_seen_, pooled_output_grads_;
    int winograd_threads_ = 0, input_grad_threads_ = 0, weight_grad_threads_ = 0;
    bool weights_valid_ = false, filter_valid_ = false, input_grad_filter_valid_ = false;
  };

  /// The fused conv + pool's state: winner masks (AVX-512 path) or the conv's output (plain path).
  class PoolState {
   public:
    void reserve(const ConvShape& s, int batch) { state_.reserve(geometry(s), batch); }
    cpu::PoolState<Path>& get() { return state_; }
    const cpu::PoolState<Path>& get() const { return state_; }

   private:
    cpu::PoolState<Path> state_;
  };

  class LinearWorkspace {
   public:
    void reserve(const Context& ctx, int batch, int in, int out) { ws_.reserve(batch, in, out, ctx.threads()); }
    void reserve_backward(const Context& ctx, int batch, int in, int out) {
      ws_.reserve_backward(batch, in, out, ctx.threads());
    }
    cpu::LinearWorkspace& get() { return ws_; }

   private:
    cpu::LinearWorkspace ws_;
  };

  // ---- kernels: one set of signatures for every backend (backend.hpp) ----

  /// The plain path is the fp32 reference and stays fp32 whatever the context asks.
  static bool uses_bf16(const Context& ctx) {
    return Path == KernelPath::avx512 && ctx.precision_in_use() == Precision::bf16;
  }
  /// Whether Winograd may run in the context's precision. In bf16 mode its 16 GEMMs run on vdpbf16ps
  /// and its transforms in fp32; where AMX tiles take the direct path's bf16 products (amx_ready), the
  /// direct path is the faster one: on the Xeon (family 6 model 207, compare_pytorch.py --bf16)
  /// Winograd on vdpbf16ps gave 362 / 1260 / 26.5 images/s (width/8 training, eval, full-width eval),
  /// the direct path on the tiles ~1150 / ~4200 / ~79 (docs/PERFORMANCE.md). Decided at run time.
  static bool winograd_in_precision(const Context& ctx) {
#ifdef VGG_BF16_KERNELS
    if (uses_bf16(ctx) && amx::amx_ready()) return false;
#endif
    (void)ctx;
    return true;
  }

  static void conv3x3_relu_forward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                                   const float* weight, const float* bias, float* y, int n) {
    ws.get().set_bf16(uses_bf16(ctx));
    cpu::conv3x3_relu_forward<Path>(x, weight, bias, y, n, geometry(s), ws.get(), ctx.threads());
  }
  /// A forward by Winograd where winograd_rule picks the layer: y = relu(conv(x) + b) (a training
  /// forward too: conv3x3_relu_backward reads only y), or, with pooled (y null), its 2x2 max-pool,
  /// keeping no pool state for a backward pass (an eval forward). Returns false, doing nothing, where
  /// the rule does not pick it (the caller runs the direct path). `mode`: the network's, which
  /// decides whether a repeated eval call may take a transform that the batch alone would not pay for.
  static bool conv3x3_relu_forward_winograd(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                                            const float* weight, const float* bias, float* y, float* pooled, int n,
                                            Mode mode) {
    if (!ws.use_winograd(ctx, s)) return false;
    const WinogradFilter<Path>* u = ws.winograd_filter(weight, s, n, ctx.threads(), mode, uses_bf16(ctx));
    if (!u) return false;
    cpu::winograd_conv3x3_forward<Path>(x, *u, bias, y, n, winograd_geometry(s), ws.winograd_workspace(uses_bf16(ctx)),
                                        ctx.threads(), true, pooled);
    return true;
  }
  /// The training forward of a fused conv + pool by Winograd where winograd_rule picks the layer:
  /// pooled, and in `state` the winner masks that conv3x3_relu_pool_backward reads (AVX-512 path only:
  /// the plain path's state is the full-size output); in bf16 mode on bf16 GEMMs, as every Winograd
  /// call. Returns false, doing nothing, where not taken.
  static bool conv3x3_relu_pool_forward_winograd(Context& ctx, ConvWorkspace& ws, PoolState& state,
                                                 const ConvShape& s, const float* x, const float* weight,
                                                 const float* bias, float* pooled, int n) {
    if constexpr (!cpu::PoolState<Path>::keeps_winners) {
      return false;
    } else {
      if (!ws.use_winograd(ctx, s)) return false;
      const WinogradFilter<Path>* u = ws.winograd_filter(weight, s, n, ctx.threads(), Mode::train, uses_bf16(ctx));
      if (!u) return false;
      cpu::winograd_conv3x3_forward<Path>(x, *u, bias, nullptr, n, winograd_geometry(s), ws.winograd_workspace(uses_bf16(ctx)),
                                          ctx.threads(), true, pooled, state.get().winners());
      return true;
    }
  }
  static void conv3x3_relu_pool_forward(Context& ctx, ConvWorkspace& ws, PoolState& state, const ConvShape& s,
                                        const float* x, const float* weight, const float* bias, float* pooled, int n) {
    ws.get().set_bf16(uses_bf16(ctx));
    cpu::conv3x3_relu_pool_forward<Path>(x, weight, bias, pooled, state.get(), n, geometry(s), ws.get(), ctx.threads());
  }
  static void conv3x3_relu_backward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                                    const float* weight, const float* y, float* dy, float* dx, float* weight_grad,
                                    float* bias_grad, int n) {
    ws.get().set_bf16(uses_bf16(ctx));
    // Where the rule picks the layer, dx by Winograd: the direct backward leaves dz = dy * (y > 0) in
    // dy, which is the input gradient's convolution input.
    const WinogradFilter<Path>* u =
        dx && ws.use_winograd_input_grad(ctx, s)
            ? ws.winograd_input_grad_filter(weight, s, n, ctx.threads(), uses_bf16(ctx))
            : nullptr;
    if (u && ws.use_winograd_weight_grad(ctx, s)) {  // every gradient by Winograd, no column matrix
      cpu::winograd_conv3x3_weight_grad<Path>(x, y, dy, weight_grad, bias_grad, n, winograd_geometry(s),
                                              ws.winograd_workspace(), ctx.threads());
      cpu::winograd_conv3x3_input_grad<Path>(dy, *u, dx, n, winograd_geometry(s), ws.winograd_workspace(),
                                             ctx.threads());
      return;
    }
    cpu::conv3x3_relu_backward<Path>(x, weight, y, dy, u ? nullptr : dx, weight_grad, bias_grad, n, geometry(s),
                                     ws.get(), ctx.threads());
    if (u)
      cpu::winograd_conv3x3_input_grad<Path>(dy, *u, dx, n, winograd_geometry(s), ws.winograd_workspace(uses_bf16(ctx)),
                                             ctx.threads());
  }
  static void conv3x3_relu_pool_backward(Context& ctx, ConvWorkspace& ws, const PoolState& state, const ConvShape& s,
                                         const float* x, const float* weight, const float* dy_pooled, float* dx,
                                         float* weight_grad, float* bias_grad, int n) {
    ws.get().set_bf16(uses_bf16(ctx));
    // Where the rule picks the layer, dx by Winograd from the whole dz (rebuilt from the pool state, as
    // the direct backward does band by band), and the weight and bias gradients by Winograd too where
    // use_winograd_weight_grad says, by the direct path otherwise.
    const WinogradFilter<Path>* u = dx && ws.use_winograd_input_grad(ctx, s, /*pooled=*/true, n)
                                        ? ws.winograd_input_grad_filter(weight, s, n, ctx.threads(), uses_bf16(ctx))
                                        : nullptr;
    if (!u) {
      cpu::conv3x3_relu_pool_backward<Path>(x, weight, state.get(), dy_pooled, dx, weight_grad, bias_grad, n,
                                            geometry(s), ws.get(), ctx.threads());
      return;
    }
    float* dz = ws.pooled_output_grads();
    if constexpr (Path == KernelPath::avx512) {  // (Winograd runs on this path only)
      if (ws.use_winograd_weight_grad(ctx, s)) {  // dz from the winners, then every gradient by Winograd
        cpu::conv3x3_relu_pool_unpool<Path>(state.get(), dy_pooled, dz, n, geometry(s), ctx.threads());
        cpu::winograd_conv3x3_weight_grad<Path>(x, nullptr, dz, weight_grad, bias_grad, n, winograd_geometry(s),
                                                ws.winograd_workspace(), ctx.threads());
        cpu::winograd_conv3x3_input_grad<Path>(dz, *u, dx, n, winograd_geometry(s), ws.winograd_workspace(),
                                               ctx.threads());
        return;
      }
    }
    cpu::conv3x3_relu_pool_backward_dz<Path>(x, weight, state.get(), dy_pooled, dz, weight_grad, bias_grad, n,
                                             geometry(s), ws.get(), ctx.threads());
    cpu::winograd_conv3x3_input_grad<Path>(dz, *u, dx, n, winograd_geometry(s), ws.winograd_workspace(uses_bf16(ctx)),
                                           ctx.threads());
  }

  static void conv3x3_forward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x, const float* weight,
                              const float* bias, float* y, int n) {
    cpu::conv3x3_forward<Path>(x, weight, bias, y, n, geometry(s), ws.get(), ctx.threads());
  }
  static void conv3x3_backward(Context& ctx, ConvWorkspace& ws, const ConvShape& s, const float* x,
                               const float* weight, float* dz, float* dx, float* weight_grad, float* bias_grad, int n) {
    cpu::conv3x3_backward<Path>(x, weight, dz, dx, weight_grad, bias_grad, n, geometry(s), ws.get(), ctx.threads());
  }

  static void batchnorm_relu_forward(Context& ctx, const BatchNormShape& s, const float* z, const BatchNormTensors& t,
                                     float* y, int n) {
    cpu::batchnorm_relu_forward(s, z, t, y, n, ctx.threads());
  }
  static void batchnorm_relu_backward(Context& ctx, const BatchNormShape& s, const float* z, const float* y,
                                      const float* dy, const BatchNormTensors& t, float* dz, float* weight_grad,
                                      float* bias_grad, int n) {
    cpu::batchnorm_relu_backward(s, z, y, dy, t, dz, weight_grad, bias_grad, n, ctx.threads());
  }
  static void batchnorm_fold(Context& ctx, const BatchNormShape& s, const float* weight, const float* bias,
                             long fan_in, const BatchNormTensors& t, float* folded_weight, float* folded_bias) {
    cpu::batchnorm_fold(s, weight, bias, fan_in, t, folded_weight, folded_bias, ctx.threads());
  }
  static void batchnorm_fold_backward(Context& ctx, const BatchNormShape& s, const float* weight, const float* bias,
                                      long fan_in, const BatchNormTensors& t, const float* folded_weight_grad,
                                      const float* folded_bias_grad, float* weight_grad, float* bias_grad,
                                      float* gamma_grad, float* beta_grad) {
    cpu::batchnorm_fold_backward(s, weight, bias, fan_in, t, folded_weight_grad, folded_bias_grad, weight_grad,
                                 bias_grad, gamma_grad, beta_grad, ctx.threads());
  }

  static void maxpool2x2_forward(Context& ctx, const float* x, float* y, long planes, int h, int w) {
    if constexpr (Path == KernelPath::avx512)
      cpu::maxpool2x2_forward(x, y, planes, h, w, ctx.threads());
    else
      cpu::maxpool2x2_forward_plain(x, y, planes, h, w, ctx.threads());
  }
  static void maxpool2x2_backward(Context& ctx, const float* x, const float* dy, float* dx, long planes, int h, int w) {
    if constexpr (Path == KernelPath::avx512)
      cpu::maxpool2x2_backward(x, dy, dx, planes, h, w, ctx.threads());
    else
      cpu::maxpool2x2_backward_plain(x, dy, dx, planes, h, w, ctx.threads());
  }

  static void adaptive_avgpool_forward(Context& ctx, const float* x, float* y, long planes, int h, int w, int oh,
                                       int ow) {
    cpu::adaptive_avgpool_forward(x, y, planes, h, w, oh, ow, ctx.threads());
  }
  static void adaptive_avgpool_backward(Context& ctx, const float* dy, float* dx, long planes, int h, int w, int oh,
                                        int ow) {
    cpu::adaptive_avgpool_backward(dy, dx, planes, h, w, oh, ow, ctx.threads());
  }

  static void linear_forward(Context& ctx, LinearWorkspace& ws, const float* x, const float* weight, const float* bias,
                             float* y, int n, int in, int out, bool relu) {
    ws.get().set_bf16(uses_bf16(ctx));
    cpu::linear_forward<Path>(x, weight, bias, y, n, in, out, relu, ws.get(), ctx.threads());
  }
  static void linear_backward(Context& ctx, LinearWorkspace& ws, const float* x, const float* weight, const float* y,
                              float* dy, float* dx, float* weight_grad, float* bias_grad, int n, int in, int out,
                              bool relu) {
    ws.get().set_bf16(uses_bf16(ctx));
    cpu::linear_backward<Path>(x, weight, y, dy, dx, weight_grad, bias_grad, n, in, out, relu, ws.get(),
                               ctx.threads());
  }

  static void dropout_forward(Context& ctx, const float* x, float* y, long count, float p, std::uint64_t seed,
                              std::uint64_t stream) {
    cpu::dropout_forward(x, y, count, p, seed, stream, ctx.threads());
  }
  static void dropout_backward(Context& ctx, const float* dy, float* dx, long count, float p, std::uint64_t seed,
                               std::uint64_t stream) {
    cpu::dropout_backward(dy, dx, count, p, seed, stream, ctx.threads());
  }

  /// requires: labels in [0, classes) (else std::invalid_argument); grad null or n x classes floats.
  static LossResult softmax_cross_entropy(Context&, const float* logits, std::span<const std::int32_t> labels,
                                          int classes, float* grad) {
    const std::size_t count = labels.size() * std::size_t(classes);
    return vgg::softmax_cross_entropy({logits, count}, labels, classes,
                                      grad ? std::span<float>(grad, count) : std::span<float>{});
  }

  static void adam_update(Context& ctx, float* p, const float* g, float* m, float* v, std::size_t count,
                          const AdamStep& step) {
    const long n = long(count);
#ifdef VGG_FAST_KERNELS
    if constexpr (Path == KernelPath::avx512) {
      // Small tensors (biases) are not worth waking the threads for.
#pragma omp parallel num_threads(n > 65536 ? ctx.threads() : 1)
      {
        const Range mine = split(n, omp_get_thread_num(), omp_get_num_threads());
        adam_avx512(p, g, m, v, mine.begin, mine.end, step);
      }
      return;
    }
#endif
#pragma omp parallel for simd schedule(static) num_threads(ctx.threads()) if (n > 65536)
    for (long i = 0; i < n; ++i) elementwise::adam(p[i], g[i], m[i], v[i], step);
  }
  static void sgd_update(Context& ctx, float* p, const float* g, float* momentum, std::size_t count,
                         const SgdStep& step) {
    const long n = long(count);
#pragma omp parallel for simd schedule(static) num_threads(ctx.threads()) if (n > 65536)
    for (long i = 0; i < n; ++i) elementwise::sgd(p[i], g[i], momentum[i], step);
  }

  static bool all_finite(Context&, const float* x, std::size_t count) {
    // One pass, no early exit: the loop vectorises, and a NaN or Inf is the rare case.
    bool finite = true;
#pragma omp simd reduction(&& : finite)
    for (std::size_t i = 0; i < count; ++i) finite = finite && std::isfinite(x[i]);
    return finite;
  }

 private:
  static Conv3x3Geometry geometry(const ConvShape& s) { return {s.cin, s.cout, s.h, s.w}; }
  static WinogradGeometry winograd_geometry(const ConvShape& s) { return {s.cin, s.cout, s.h, s.w}; }
};

/// The CPU backend on the fastest kernel path compiled in: the default of every network.
using Backend = BasicBackend<fastest_path>;
/// The CPU backend on the plain path (Eigen GEMM, separate bias, ReLU and pool passes).
using PlainBackend = BasicBackend<KernelPath::plain>;

static_assert(vgg::Backend<Backend> && vgg::Backend<PlainBackend>);

}  // namespace vgg::cpu
