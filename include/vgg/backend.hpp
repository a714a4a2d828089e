#pragma once
// The seam between the network and the numbers: what a backend type supplies. Layers, the network
// and the optimizers are written once against this contract and name no backend's internals, so
// several backends live in one program (vgg::cpu::Backend, vgg::cpu::PlainBackend, and, with
// <vgg/cuda.hpp>, vgg::cuda::Backend) and are tested against each other.
//
// A backend B supplies
//   - memory: B::Buffer<T>, a grow-only array in B's memory (reserve(n), data(), capacity(); the
//     old contents are not kept when it grows); B::host_memory says whether a host pointer can
//     read it; B::copy_to_host / B::copy_from_host move parameters (checkpoints, initialisation),
//     batches and logits; B::device names the memory space (two backends with the same device
//     share buffers, e.g. the CPU's plain and AVX-512 paths);
//   - its execution context, B::Context: host threads on the CPU, a stream and library handles on
//     a GPU. The network owns one; every kernel takes it first;
//   - per-layer workspaces: B::ConvWorkspace, B::PoolState (what a fused conv + 2x2 max-pool keeps
//     between its forward and backward passes), B::LinearWorkspace, each reserved once for the
//     largest batch (no allocation in a steady-state step);
//   - kernels with one set of signatures (below): conv + bias + ReLU, the fused conv + pool pair,
//     conv + bias alone and batch norm + ReLU (training), batch norm folded into a conv (eval),
//     max-pool, linear (+ ReLU), dropout, softmax cross-entropy, the Adam and SGD updates, and a
//     finite check (numerical health);
//   - B::BatchStager: batches staged ahead of their forward pass (staging.hpp): a view of the
//     caller's batch on host-memory backends, a double-buffered pinned upload on a copy stream on a
//     GPU, so that the upload of batch k+1 overlaps step k.
// A backend that runs out of memory throws vgg::OutOfMemoryError (memory_error.hpp); the network
// adds what the buffer was for and the batch size.
// Pointers given to kernels point into B's memory; labels and scalars stay on the host.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "vgg/loss.hpp"
#include "vgg/memory_error.hpp"
#include "vgg/staging.hpp"

namespace vgg {

/// Where a backend's memory lives. Two backends with the same device can share buffers.
enum class Device { cpu, cuda };

/// A 3x3 convolution (stride 1, padding 1) from cin channels to cout channels on h x w images.
struct ConvShape {
  int cin, cout, h, w;
  friend constexpr bool operator==(const ConvShape&, const ConvShape&) = default;
};

/// A batch norm (torch.nn.BatchNorm2d) over the channels of an n x channels x plane batch.
struct BatchNormShape {
  int channels;
  long plane;  ///< h x w
  float eps, momentum;
};

/// The per-channel tensors of a batch norm, `channels` floats each in the backend's memory.
struct BatchNormTensors {
  const float* weight;  ///< gamma
  const float* bias;    ///< beta
  float* running_mean;
  float* running_var;
  float* saved_mean;    ///< training: the last batch's mean, for the backward
  float* saved_invstd;  ///< training: 1 / sqrt(the last batch's biased variance + eps)
};

/// The scalars of one Adam update (torch.optim.Adam, amsgrad off), computed on the host once a step.
struct AdamStep {
  float step_size;   ///< lr / (1 - beta1^t)
  float beta1, beta2;
  float bias2_sqrt;  ///< sqrt(1 - beta2^t)
  float eps, weight_decay;
};

/// The scalars of one SGD update (torch.optim.SGD).
struct SgdStep {
  float lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first;  ///< the first step: the momentum buffer is set to the gradient (as torch does)
};

// clang-format off
template <class B>
concept Backend = requires(typename B::Context& ctx, typename B::ConvWorkspace& conv_ws,
                           typename B::PoolState& pool_state, typename B::LinearWorkspace& linear_ws,
                           typename B::template Buffer<float>& buffer, const ConvShape& s, const float* in,
                           float* out, std::span<const std::int32_t> labels, const AdamStep& adam,
                           const SgdStep& sgd, int n, long count, std::uint64_t u,
                           typename B::BatchStager& stager, std::span<const float> images,
                           const StagedBatch& staged, const BatchNormShape& bn,
                           const BatchNormTensors& bn_tensors) {
  { B::device } -> std::convertible_to<Device>;
  { B::host_memory } -> std::convertible_to<bool>;
  { B::name() } -> std::convertible_to<const char*>;
  buffer.reserve(std::size_t(1));
  { buffer.data() } -> std::same_as<float*>;
  B::copy_to_host(in, out, std::size_t(1), ctx);
  B::copy_from_host(in, out, std::size_t(1), ctx);
  { ctx.threads() } -> std::convertible_to<int>;
  ctx.set_threads(n);
  conv_ws.reserve(ctx, s, n);
  conv_ws.reserve_backward(ctx, s, n, true);
  pool_state.reserve(s, n);
  linear_ws.reserve(ctx, n, n, n);
  linear_ws.reserve_backward(ctx, n, n, n);
  // y = relu(conv3x3(x, w) + b)
  B::conv3x3_relu_forward(ctx, conv_ws, s, in, in, in, out, n);
  // pooled = maxpool2x2(relu(conv3x3(x, w) + b)); state keeps what the backward needs
  B::conv3x3_relu_pool_forward(ctx, conv_ws, pool_state, s, in, in, in, out, n);
  // (x, w, y, dy -> dz in place, dx or null, dw, db)
  B::conv3x3_relu_backward(ctx, conv_ws, s, in, in, in, out, out, out, out, n);
  // (x, w, state, dy_pooled, dx or null, dw, db)
  B::conv3x3_relu_pool_backward(ctx, conv_ws, pool_state, s, in, in, in, out, out, out, n);
  // z = conv3x3(x, w) + b, no ReLU (before a batch norm); (x, w, dz, dx or null, dw, db)
  B::conv3x3_forward(ctx, conv_ws, s, in, in, in, out, n);
  B::conv3x3_backward(ctx, conv_ws, s, in, in, out, out, out, out, n);
  // Training: y = relu(batchnorm(z)) with the batch's statistics, which are saved; the running
  // statistics move towards them. (z, tensors, y, batch)
  B::batchnorm_relu_forward(ctx, bn, in, bn_tensors, out, n);
  // (z, y, dy, tensors, dz (may be dy), dgamma, dbeta, batch): the saved statistics' gradients
  B::batchnorm_relu_backward(ctx, bn, in, in, out, bn_tensors, out, out, out, n);
  // Eval: the batch norm (running statistics) folded into the conv before it, and the gradients
  // of the conv's and the norm's parameters from those of the folded conv.
  // (conv weight, conv bias, fan_in, tensors, folded weight, folded bias)
  B::batchnorm_fold(ctx, bn, in, in, count, bn_tensors, out, out);
  // (conv weight, conv bias, fan_in, tensors, folded dw, folded db, dw, db, dgamma, dbeta)
  B::batchnorm_fold_backward(ctx, bn, in, in, count, bn_tensors, in, in, out, out, out, out);
  B::maxpool2x2_forward(ctx, in, out, count, n, n);                   // (x, y, planes, h, w)
  B::maxpool2x2_backward(ctx, in, in, out, count, n, n);              // (x, dy, dx, planes, h, w)
  B::adaptive_avgpool_forward(ctx, in, out, count, n, n, n, n);      // (x, y, planes, h, w, oh, ow)
  B::adaptive_avgpool_backward(ctx, in, out, count, n, n, n, n);     // (dy, dx, planes, h, w, oh, ow)
  B::linear_forward(ctx, linear_ws, in, in, in, out, n, n, n, true);  // (x, w, b, y, batch, in, out, relu)
  B::linear_backward(ctx, linear_ws, in, in, in, out, out, out, out, n, n, n, true);
  B::dropout_forward(ctx, in, out, count, 0.5f, u, u);                // (x, y, count, p, seed, stream)
  B::dropout_backward(ctx, in, out, count, 0.5f, u, u);
  { B::softmax_cross_entropy(ctx, in, labels, n, out) } -> std::same_as<LossResult>;  // grad may be null
  B::adam_update(ctx, out, in, out, out, std::size_t(1), adam);       // (p, g, m, v, count, step)
  B::sgd_update(ctx, out, in, out, std::size_t(1), sgd);              // (p, g, momentum, count, step)
  { B::all_finite(ctx, in, std::size_t(1)) } -> std::same_as<bool>;  // no NaN or Inf among count floats
  { stager.stage(ctx, images, labels, std::size_t(1)) } -> std::same_as<StagedBatch>;  // (images, labels, floats per sample)
  { stager.acquire(ctx, staged) } -> std::same_as<const float*>;  // the compute waits for the upload
  { stager.next_slot() } -> std::convertible_to<int>;             // the slot the next stage() refills
};
// clang-format on

}  // namespace vgg
