// The CUDA backend's element-wise kernels, run on the HOST: every functor of vgg/cuda/ops.hpp is
// called for each index of the index space its kernel covers, and the result is compared with the
// CPU backend's kernel (bit for bit where the arithmetic is the same). The GEMM calls of the linear
// layers are run through a host reference BLAS. Nothing here needs a GPU.
#include <doctest/doctest.h>

#include <vgg/cuda.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "compare.hpp"

namespace {

using Cpu = vgg::cpu::PlainBackend;
namespace ops = vgg::cuda::ops;

std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  vgg::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform(lo, hi);
  return v;
}

/// Values from a few levels, so that 2x2 windows often tie and are often not positive.
std::vector<float> tied_floats(std::size_t n, std::uint64_t seed) {
  static constexpr float levels[] = {-1.0f, 0.0f, 0.5f, 0.5f, 1.0f};
  vgg::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = levels[rng.below(5)];
  return v;
}

/// What the device does: op(i) for every i of the kernel's index space.
template <class Op>
void run_on_host(const Op& op) {
  for (long i = 0; i < op.count(); ++i) op(i);
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}


/// Column-major SGEMM as BLAS (and cuBLAS) define it.
void host_gemm(const ops::Gemm& g) {
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      double sum = 0;
      for (int l = 0; l < g.k; ++l) {
        const float a = g.transpose_a ? g.a[l + long(i) * g.lda] : g.a[i + long(l) * g.lda];
        const float b = g.transpose_b ? g.b[j + long(l) * g.ldb] : g.b[l + long(j) * g.ldb];
        sum += double(a) * double(b);
      }
      g.c[i + long(j) * g.ldc] = float(sum);
    }
}

}  // namespace

static_assert(vgg::Backend<vgg::cuda::Backend>);
static_assert(!vgg::cuda::Backend::host_memory && vgg::cuda::Backend::device == vgg::Device::cuda);

TEST_CASE("dropout: the kernel's masks and values are the CPU's, bit for bit") {
  vgg::cpu::Context ctx;
  for (long count : {1L, 37L, 1000L})
    for (float p : {0.1f, 0.5f, 0.9f}) {
      const auto x = random_floats(std::size_t(count), 7);
      std::vector<float> cpu(x.size()), gpu(x.size(), -7.0f);
      Cpu::dropout_forward(ctx, x.data(), cpu.data(), count, p, 42, 3);
      run_on_host(ops::Dropout{x.data(), gpu.data(), count, p, 1.0f / (1.0f - p), 42, 3});
      CAPTURE(count);
      CAPTURE(p);
      CHECK(bit_equal(cpu, gpu));
      Cpu::dropout_backward(ctx, x.data(), cpu.data(), count, p, 42, 4);
      run_on_host(ops::Dropout{x.data(), gpu.data(), count, p, 1.0f / (1.0f - p), 42, 4});
      CHECK(bit_equal(cpu, gpu));
    }
  // The stream changes the mask (the test can fail).
  std::vector<float> ones(1000, 1.0f), a(1000), b(1000);
  run_on_host(ops::Dropout{ones.data(), a.data(), 1000, 0.5f, 2.0f, 42, 3});
  run_on_host(ops::Dropout{ones.data(), b.data(), 1000, 0.5f, 2.0f, 42, 5});
  CHECK_FALSE(bit_equal(a, b));
}

TEST_CASE("max-pool forward and backward (with and without the ReLU mask) match the CPU on odd sizes and ties") {
  vgg::cpu::Context ctx;
  for (auto [planes, h, w] : {std::array{1, 2, 2}, std::array{3, 7, 9}, std::array{2, 8, 5}, std::array{4, 5, 6}}) {
    CAPTURE(planes);
    CAPTURE(h);
    CAPTURE(w);
    const std::size_t in = std::size_t(planes) * h * w, out = std::size_t(planes) * (h / 2) * (w / 2);
    const auto x = tied_floats(in, std::uint64_t(in));
    const auto dy = random_floats(out, 11);
    std::vector<float> y_cpu(out), y_gpu(out, -7.0f);
    Cpu::maxpool2x2_forward(ctx, x.data(), y_cpu.data(), planes, h, w);
    const ops::MaxPoolForward forward{x.data(), y_gpu.data(), planes, h, w};
    CHECK(forward.count() == long(out));
    run_on_host(forward);
    CHECK(bit_equal(y_cpu, y_gpu));

    std::vector<float> dx_cpu(in, 3.0f), dx_gpu(in, -7.0f);
    Cpu::maxpool2x2_backward(ctx, x.data(), dy.data(), dx_cpu.data(), planes, h, w);
    const ops::MaxPoolBackward backward{x.data(), dy.data(), dx_gpu.data(), planes, h, w, false};
    CHECK(backward.count() == long(in));
    run_on_host(backward);
    CHECK(bit_equal(dx_cpu, dx_gpu));

    // The fused conv + pool's backward: the pool's and the ReLU's at once.
    std::fill(dx_cpu.begin(), dx_cpu.end(), 3.0f);
    vgg::cpu::maxpool2x2_backward_plain(x.data(), dy.data(), dx_cpu.data(), planes, h, w, 1, /*relu_mask=*/true);
    run_on_host(ops::MaxPoolBackward{x.data(), dy.data(), dx_gpu.data(), planes, h, w, true});
    CHECK(bit_equal(dx_cpu, dx_gpu));
  }
}

TEST_CASE("adaptive average pool forward and backward match the CPU, bit for bit, on growing and shrinking sizes") {
  vgg::cpu::Context ctx;
  // (planes, h, w, oh, ow): 3x2 features spread to 7x7 (overlapping bins), 13x9 and 14x14 shrunk.
  for (auto [planes, h, w, oh, ow] : {std::array{2, 3, 2, 7, 7}, std::array{3, 13, 9, 7, 7},
                                      std::array{1, 14, 14, 7, 7}, std::array{4, 1, 1, 7, 7}, std::array{2, 5, 3, 2, 4}}) {
    CAPTURE(planes);
    CAPTURE(h);
    CAPTURE(w);
    const std::size_t in = std::size_t(planes) * h * w, out = std::size_t(planes) * oh * ow;
    const auto x = random_floats(in, std::uint64_t(in));
    const auto dy = random_floats(out, 17);
    std::vector<float> y_cpu(out), y_gpu(out, -7.0f);
    Cpu::adaptive_avgpool_forward(ctx, x.data(), y_cpu.data(), planes, h, w, oh, ow);
    const ops::AdaptiveAvgPoolForward forward{x.data(), y_gpu.data(), planes, h, w, oh, ow};
    CHECK(forward.count() == long(out));
    run_on_host(forward);
    CHECK(bit_equal(y_cpu, y_gpu));

    std::vector<float> dx_cpu(in, 3.0f), dx_gpu(in, -7.0f);
    Cpu::adaptive_avgpool_backward(ctx, dy.data(), dx_cpu.data(), planes, h, w, oh, ow);
    const ops::AdaptiveAvgPoolBackward backward{dy.data(), dx_gpu.data(), planes, h, w, oh, ow};
    CHECK(backward.count() == long(in));
    run_on_host(backward);
    CHECK(bit_equal(dx_cpu, dx_gpu));
  }
}

TEST_CASE("max-pool with NaN: output NaN and gradient to the last NaN, as the CPU and PyTorch") {
  vgg::cpu::Context ctx;
  const int planes = 2, h = 6, w = 8;
  const std::size_t in = std::size_t(planes) * h * w, out = std::size_t(planes) * (h / 2) * (w / 2);
  auto x = tied_floats(in, 5);
  for (std::size_t i = 0; i < in; i += 7) x[i] = std::nanf("");  // windows with one or two NaNs
  const auto dy = random_floats(out, 12);
  std::vector<float> y_cpu(out), y_gpu(out, -7.0f);
  Cpu::maxpool2x2_forward(ctx, x.data(), y_cpu.data(), planes, h, w);
  run_on_host(ops::MaxPoolForward{x.data(), y_gpu.data(), planes, h, w});
  CHECK(bit_equal(y_cpu, y_gpu));
  for (bool relu : {false, true}) {
    std::vector<float> dx_cpu(in, 3.0f), dx_gpu(in, -7.0f);
    vgg::cpu::maxpool2x2_backward_plain(x.data(), dy.data(), dx_cpu.data(), planes, h, w, 1, relu);
    run_on_host(ops::MaxPoolBackward{x.data(), dy.data(), dx_gpu.data(), planes, h, w, relu});
    CHECK(bit_equal(dx_cpu, dx_gpu));
  }
}

TEST_CASE("linear layers: the GEMM calls, bias + ReLU and the backward kernels match the CPU backend") {
  vgg::cpu::Context ctx;
  ctx.set_threads(1);
  for (auto [n, in, out] : {std::array{1, 1, 1}, std::array{5, 13, 7}, std::array{3, 40, 17}})
    for (bool relu : {false, true}) {
      CAPTURE(n);
      CAPTURE(in);
      CAPTURE(out);
      CAPTURE(relu);
      const auto x = random_floats(std::size_t(n) * in, 1);
      const auto wt = random_floats(std::size_t(out) * in, 2);
      const auto b = random_floats(std::size_t(out), 3);
      Cpu::LinearWorkspace ws;
      ws.reserve(ctx, n, in, out);
      ws.reserve_backward(ctx, n, in, out);
      std::vector<float> y_cpu(std::size_t(n) * out), y_gpu(y_cpu.size(), -7.0f);
      Cpu::linear_forward(ctx, ws, x.data(), wt.data(), b.data(), y_cpu.data(), n, in, out, relu);
      host_gemm(ops::linear_forward_gemm(x.data(), wt.data(), y_gpu.data(), n, in, out));
      run_on_host(ops::BiasRelu{y_gpu.data(), b.data(), long(n) * out, 1, out, relu});
      CHECK(relative_difference(y_cpu, y_gpu) < 1e-5f);

      const auto dy = random_floats(y_cpu.size(), 4);
      std::vector<float> dz_cpu = dy, dz_gpu = dy;
      std::vector<float> dx_cpu(x.size()), dw_cpu(wt.size()), db_cpu(b.size());
      std::vector<float> dx_gpu(x.size(), -7.0f), dw_gpu(wt.size(), -7.0f), db_gpu(b.size(), -7.0f);
      Cpu::linear_backward(ctx, ws, x.data(), wt.data(), y_cpu.data(), dz_cpu.data(), dx_cpu.data(), dw_cpu.data(),
                           db_cpu.data(), n, in, out, relu);
      if (relu) run_on_host(ops::ReluBackward{y_cpu.data(), dz_gpu.data(), long(n) * out});
      CHECK(bit_equal(dz_cpu, dz_gpu));
      host_gemm(ops::linear_weight_grad_gemm(x.data(), dz_gpu.data(), dw_gpu.data(), n, in, out));
      run_on_host(ops::LinearBiasGrad{dz_gpu.data(), db_gpu.data(), n, out});
      host_gemm(ops::linear_input_grad_gemm(wt.data(), dz_gpu.data(), dx_gpu.data(), n, in, out));
      CHECK(relative_difference(dw_cpu, dw_gpu) < 1e-5f);
      CHECK(relative_difference(db_cpu, db_gpu) < 1e-5f);
      CHECK(relative_difference(dx_cpu, dx_gpu) < 1e-5f);
    }
}

TEST_CASE("conv bias + ReLU (the unfused fallback) adds each channel's bias over its plane") {
  const int n = 3, c = 5, plane = 7 * 3;
  auto y = random_floats(std::size_t(n) * c * plane, 5);
  const auto b = random_floats(std::size_t(c), 6);
  std::vector<float> expected(y.size());
  for (int i = 0; i < n; ++i)
    for (int ch = 0; ch < c; ++ch)
      for (int p = 0; p < plane; ++p) {
        const std::size_t k = (std::size_t(i) * c + ch) * plane + p;
        expected[k] = std::max(y[k] + b[std::size_t(ch)], 0.0f);
      }
  run_on_host(ops::BiasRelu{y.data(), b.data(), long(y.size()), plane, c, true});
  CHECK(bit_equal(expected, y));
}

TEST_CASE("batch norm: statistics, BN + ReLU, its backward and the eval fold match the CPU backend's") {
  vgg::cpu::Context ctx;
  ctx.set_threads(2);
  const int n = 3, channels = 4;
  const long plane = 7 * 5, total = n * channels * plane, fan_in = 27;
  const vgg::BatchNormShape s{channels, plane, 1e-5f, 0.1f};
  const auto z = random_floats(std::size_t(total), 31, -2.0f, 3.0f);
  const auto gamma = random_floats(channels, 32, 0.5f, 1.5f), beta = random_floats(channels, 33);
  const auto dy = random_floats(std::size_t(total), 34);
  // Per backend: running statistics (in/out), saved statistics, outputs.
  struct Run {
    std::vector<float> running_mean{0.1f, -0.2f, 0.3f, 0.0f}, running_var{1.0f, 0.5f, 2.0f, 1.5f};
    std::vector<float> saved_mean = std::vector<float>(4), saved_invstd = std::vector<float>(4);
    std::vector<float> y, dz, dgamma = std::vector<float>(4), dbeta = std::vector<float>(4);
    vgg::BatchNormTensors tensors(const std::vector<float>& g, const std::vector<float>& b) {
      return {g.data(), b.data(), running_mean.data(), running_var.data(), saved_mean.data(), saved_invstd.data()};
    }
  } cpu, gpu;
  cpu.y.resize(std::size_t(total));
  gpu.y.assign(std::size_t(total), -7.0f);
  Cpu::batchnorm_relu_forward(ctx, s, z.data(), cpu.tensors(gamma, beta), cpu.y.data(), n);
  const vgg::BatchNormTensors t = gpu.tensors(gamma, beta);
  run_on_host(ops::BatchNormStatistics{z.data(), n, channels, plane, t, s.momentum, s.eps});
  run_on_host(ops::BatchNormRelu{z.data(), gpu.y.data(), total, plane, channels, t});
  CHECK(relative_difference(cpu.saved_mean, gpu.saved_mean) <= 1e-6f);
  CHECK(relative_difference(cpu.saved_invstd, gpu.saved_invstd) <= 1e-6f);
  CHECK(relative_difference(cpu.running_mean, gpu.running_mean) <= 1e-6f);
  CHECK(relative_difference(cpu.running_var, gpu.running_var) <= 1e-6f);
  CHECK(relative_difference(cpu.y, gpu.y) <= 1e-6f);
  CHECK(std::count(gpu.y.begin(), gpu.y.end(), 0.0f) > total / 5);  // the ReLU did cut

  cpu.dz.resize(std::size_t(total));
  gpu.dz = dy;  // in place, as the layer runs it
  Cpu::batchnorm_relu_backward(ctx, s, z.data(), cpu.y.data(), dy.data(), cpu.tensors(gamma, beta), cpu.dz.data(),
                               cpu.dgamma.data(), cpu.dbeta.data(), n);
  run_on_host(ops::BatchNormGradientSums{z.data(), gpu.y.data(), gpu.dz.data(), n, channels, plane, t,
                                         gpu.dgamma.data(), gpu.dbeta.data()});
  run_on_host(ops::BatchNormInputGradient{z.data(), gpu.y.data(), gpu.dz.data(), gpu.dz.data(), total, plane, channels,
                                          t, gpu.dgamma.data(), gpu.dbeta.data()});
  CHECK(relative_difference(cpu.dgamma, gpu.dgamma) <= 1e-5f);
  CHECK(relative_difference(cpu.dbeta, gpu.dbeta) <= 1e-5f);
  CHECK(relative_difference(cpu.dz, gpu.dz) <= 1e-5f);

  // Eval: the fold into a conv (weights channels x fan_in) and the gradients back, in place.
  const auto w = random_floats(std::size_t(channels * fan_in), 35), b = random_floats(channels, 36);
  const auto dw_folded = random_floats(w.size(), 37), db_folded = random_floats(channels, 38);
  std::vector<float> fw_cpu(w.size()), fb_cpu(channels), fw_gpu(w.size(), -7.0f), fb_gpu(channels, -7.0f);
  Cpu::batchnorm_fold(ctx, s, w.data(), b.data(), fan_in, cpu.tensors(gamma, beta), fw_cpu.data(), fb_cpu.data());
  run_on_host(ops::BatchNormFoldWeights{w.data(), fw_gpu.data(), fan_in, channels, t, s.eps});
  run_on_host(ops::BatchNormFoldBias{b.data(), fb_gpu.data(), channels, t, s.eps});
  CHECK(bit_equal(fw_cpu, fw_gpu));
  CHECK(bit_equal(fb_cpu, fb_gpu));
  std::vector<float> dw_cpu = dw_folded, db_cpu = db_folded, dw_gpu = dw_folded, db_gpu = db_folded;
  std::vector<float> dg_cpu(4), dbeta_cpu(4), dg_gpu(4), dbeta_gpu(4);
  Cpu::batchnorm_fold_backward(ctx, s, w.data(), b.data(), fan_in, cpu.tensors(gamma, beta), dw_cpu.data(),
                               db_cpu.data(), dw_cpu.data(), db_cpu.data(), dg_cpu.data(), dbeta_cpu.data());
  run_on_host(ops::BatchNormUnfoldChannelGradients{w.data(), b.data(), dw_gpu.data(), db_gpu.data(), db_gpu.data(),
                                                   dg_gpu.data(), dbeta_gpu.data(), fan_in, channels, t, s.eps});
  run_on_host(ops::BatchNormUnfoldWeightGradients{dw_gpu.data(), dw_gpu.data(), fan_in, channels, t, s.eps});
  CHECK(bit_equal(dw_cpu, dw_gpu));
  CHECK(bit_equal(db_cpu, db_gpu));
  CHECK(relative_difference(dg_cpu, dg_gpu) <= 1e-6f);
  CHECK(bit_equal(dbeta_cpu, dbeta_gpu));
  CHECK(dbeta_gpu == db_folded);
}

TEST_CASE("Adam and SGD updates match the CPU backend's") {
  vgg::cpu::Context ctx;
  const std::size_t count = 1001;
  const auto g = random_floats(count, 8);
  for (float weight_decay : {0.0f, 0.01f}) {
    auto p_cpu = random_floats(count, 9), m_cpu = random_floats(count, 10, -0.1f, 0.1f),
         v_cpu = random_floats(count, 11, 0.0f, 0.1f);
    auto p_gpu = p_cpu, m_gpu = m_cpu, v_gpu = v_cpu;
    for (int t = 1; t <= 3; ++t) {
      const vgg::AdamStep step{1e-3f / (1.0f - std::pow(0.9f, float(t))), 0.9f, 0.999f,
                               std::sqrt(1.0f - std::pow(0.999f, float(t))), 1e-8f, weight_decay};
      Cpu::adam_update(ctx, p_cpu.data(), g.data(), m_cpu.data(), v_cpu.data(), count, step);
      run_on_host(ops::AdamUpdate{p_gpu.data(), g.data(), m_gpu.data(), v_gpu.data(), long(count), step});
    }
    CHECK(relative_difference(p_cpu, p_gpu) < 1e-6f);
    CHECK(relative_difference(m_cpu, m_gpu) < 1e-6f);
    CHECK(relative_difference(v_cpu, v_gpu) < 1e-6f);
  }
  for (bool nesterov : {false, true})
    for (float momentum : {0.0f, 0.9f}) {
      if (nesterov && momentum == 0.0f) continue;
      auto p_cpu = random_floats(count, 12), buf_cpu = random_floats(count, 13);
      auto p_gpu = p_cpu, buf_gpu = buf_cpu;
      for (int t = 0; t < 3; ++t) {
        const vgg::SgdStep step{0.05f, momentum, 0.0f, 0.001f, nesterov, t == 0};
        Cpu::sgd_update(ctx, p_cpu.data(), g.data(), buf_cpu.data(), count, step);
        run_on_host(ops::SgdUpdate{p_gpu.data(), g.data(), buf_gpu.data(), long(count), step});
      }
      CHECK(relative_difference(p_cpu, p_gpu) < 1e-6f);
      CHECK(relative_difference(buf_cpu, buf_gpu) < 1e-6f);
    }
}

TEST_CASE("softmax cross-entropy per sample: the loss, the correct count and the gradient of vgg::softmax_cross_entropy") {
  const int batch = 7, classes = 5;
  auto logits = random_floats(std::size_t(batch) * classes, 14, -4.0f, 4.0f);
  logits[3] = logits[4] = 9.0f;  // a tie for the arg-max of sample 0: the first maximum counts
  const std::vector<std::int32_t> labels{3, 4, 0, 1, 2, 4, 0};
  std::vector<float> grad_cpu(logits.size()), grad_gpu(logits.size(), -7.0f);
  const vgg::LossResult cpu = vgg::softmax_cross_entropy(logits, labels, classes, grad_cpu);
  std::vector<double> loss(batch);
  std::vector<int> correct(batch);
  const ops::SoftmaxCrossEntropy op{logits.data(), labels.data(), grad_gpu.data(), loss.data(), correct.data(),
                                    batch, classes};
  CHECK(op.count() == batch);
  run_on_host(op);
  double sum = 0;
  int right = 0;
  for (int i = 0; i < batch; ++i) {
    sum += loss[std::size_t(i)];
    right += correct[std::size_t(i)];
  }
  CHECK(sum / batch == doctest::Approx(cpu.loss).epsilon(1e-12));
  CHECK(right == cpu.correct);
  CHECK(correct[0] == 1);
  CHECK(relative_difference(grad_cpu, grad_gpu) < 1e-6f);
  // Without a gradient buffer, the loss alone.
  std::fill(loss.begin(), loss.end(), 0.0);
  run_on_host(ops::SoftmaxCrossEntropy{logits.data(), labels.data(), nullptr, loss.data(), correct.data(), batch,
                                       classes});
  CHECK(loss[6] > 0.0);
}

TEST_CASE("the finite check finds a NaN or an infinity anywhere, and nothing in finite data") {
  vgg::cpu::Context ctx;
  auto x = random_floats(300, 15, -1e30f, 1e30f);
  int flag = 0;
  run_on_host(ops::FindNonFinite{x.data(), &flag, long(x.size())});
  CHECK(flag == 0);
  CHECK(Cpu::all_finite(ctx, x.data(), x.size()));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()})
    for (std::size_t at : {std::size_t(0), std::size_t(151), std::size_t(299)}) {
      auto y = x;
      y[at] = bad;
      flag = 0;
      run_on_host(ops::FindNonFinite{y.data(), &flag, long(y.size())});
      CHECK(flag == 1);
      CHECK_FALSE(Cpu::all_finite(ctx, y.data(), y.size()));
    }
}

TEST_CASE("a failed CUDA, cuDNN or cuBLAS call throws, naming the call, the place and the library's error") {
  auto message = [](auto&& thrower) {
    try {
      thrower();
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(nothing thrown)");
  };
  const std::string cuda = message([] { VGG_CUDA_CHECK(cudaErrorMemoryAllocation); });
  CHECK(cuda.find("cudaErrorMemoryAllocation") != std::string::npos);
  CHECK(cuda.find("test_cuda_ops.cu:") != std::string::npos);
  const std::string cudnn = message([] { VGG_CUDA_CHECK(CUDNN_STATUS_BAD_PARAM); });
  CHECK(cudnn.find("cuDNN call CUDNN_STATUS_BAD_PARAM") != std::string::npos);
  CHECK(cudnn.find(cudnnGetErrorString(CUDNN_STATUS_BAD_PARAM)) != std::string::npos);
  const std::string cublas = message([] { VGG_CUDA_CHECK(CUBLAS_STATUS_NOT_INITIALIZED); });
  CHECK(cublas.find("CUBLAS_STATUS_NOT_INITIALIZED") != std::string::npos);
  CHECK(message([] { VGG_CUDA_CHECK(cudaSuccess); }) == "(nothing thrown)");
  // A layer's reservation adds which layer and batch size it was for.
  const std::string layer = message([] {
    vgg::cuda::detail::reserving(vgg::ConvShape{3, 8, 13, 11}, 7, [] { throw std::runtime_error("out of memory"); });
  });
  CHECK(layer == "out of memory; while reserving the conv layer 3 -> 8 channels, 13 x 11, for a batch of 7");
  // Out of memory stays a vgg::OutOfMemoryError, told the layer and the batch once: the network's
  // own context (added around the layer's reservation) does not repeat or replace it.
  try {
    vgg::for_batch(7, [] { return std::string("the workspace of layer 0"); }, [] {
      vgg::cuda::detail::reserving(vgg::ConvShape{3, 8, 13, 11}, 7, [] {
        throw vgg::OutOfMemoryError("vgg::cuda", "device memory", 4096, std::size_t(1024), std::size_t(8192));
      });
    });
    FAIL("nothing thrown");
  } catch (const vgg::OutOfMemoryError& e) {
    CHECK(std::string(e.what()) ==
          "vgg::cuda: out of device memory: asked for 4096 bytes, 1024 bytes free of 8192, for the conv layer 3 -> 8 "
          "channels, 13 x 11, for a batch of 7 (a smaller batch size needs less)");
    CHECK(e.batch() == 7);
    CHECK(e.bytes_asked() == 4096);
    CHECK(e.bytes_free() == std::size_t(1024));
  }
}

namespace {
template <class Perf, class Algo>
Perf perf(Algo algo, cudnnStatus_t status, float time, std::size_t memory, bool deterministic,
          cudnnMathType_t math = CUDNN_FMA_MATH) {
  Perf p{};
  p.algo = algo;
  p.status = status;
  p.time = time;
  p.memory = memory;
  p.determinism = deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
  p.mathType = math;
  return p;
}
}  // namespace

TEST_CASE("cuDNN algorithm choice: the fastest measured FP32 candidate that fits, deterministic first") {
  using Fwd = cudnnConvolutionFwdAlgoPerf_t;
  using vgg::cuda::choose_algorithm;
  const std::vector<Fwd> measured{
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_STATUS_SUCCESS, 3.0f, 0, true),
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_STATUS_SUCCESS, 0.5f, 1 << 20, true, CUDNN_TENSOR_OP_MATH),
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, CUDNN_STATUS_SUCCESS, 0.7f, 1 << 30, true),
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_STATUS_NOT_SUPPORTED, -1.0f, 0, true),
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_STATUS_SUCCESS, 1.0f, 0, false),
      perf<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_STATUS_SUCCESS, 2.0f, 4096, true),
  };
  // Unsorted times: taken by time. TF32 (tensor-op math), too much workspace and failures are out;
  // the non-deterministic 1.0 loses to the deterministic 2.0.
  auto c = choose_algorithm(std::span<const Fwd>(measured), 1 << 20, /*measured=*/true, "forward");
  CHECK(c.algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
  CHECK(c.workspace == 4096);
  CHECK(c.measured);
  CHECK(c.deterministic);
  // With room for Winograd's workspace, it is the fastest.
  CHECK(choose_algorithm(std::span<const Fwd>(measured), std::size_t(1) << 31, true, "forward").algo ==
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD);
  // Heuristic rankings keep cuDNN's order (their times mean nothing).
  c = choose_algorithm(std::span<const Fwd>(measured), 1 << 20, /*measured=*/false, "forward");
  CHECK(c.algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
  CHECK_FALSE(c.measured);
  // Only non-deterministic candidates: the fastest of them.
  using Filter = cudnnConvolutionBwdFilterAlgoPerf_t;
  const std::vector<Filter> racy{
      perf<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_STATUS_SUCCESS, 2.0f, 0, false),
      perf<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, CUDNN_STATUS_SUCCESS, 1.0f, 0, false),
  };
  const auto f = choose_algorithm(std::span<const Filter>(racy), 0, true, "backward-filter");
  CHECK(f.algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3);
  CHECK_FALSE(f.deterministic);
  // None eligible: an error naming the direction (the caller keeps the heuristics' choice).
  CHECK_THROWS_WITH_AS(choose_algorithm(std::span<const Fwd>(measured).subspan(3, 1), 1 << 20, true, "forward"),
                       doctest::Contains("no forward algorithm"), std::runtime_error);
  CHECK_THROWS_AS(choose_algorithm(std::span<const Fwd>(), 1 << 20, true, "forward"), std::runtime_error);
}

TEST_CASE("the algorithm cache: one entry per (shape, batch), stable, and the workspace of the chosen three") {
  vgg::cuda::AlgorithmCache cache;
  const vgg::cuda::ConvKey a{vgg::ConvShape{4, 8, 9, 7}, 5}, same_shape_other_batch{vgg::ConvShape{4, 8, 9, 7}, 3},
      other_shape{vgg::ConvShape{8, 8, 9, 7}, 5};
  CHECK(cache.find(a) == nullptr);
  vgg::cuda::ConvAlgorithms algorithms;
  algorithms.forward.workspace = 100;
  algorithms.backward_data.workspace = 300;
  algorithms.backward_filter.workspace = 200;
  CHECK(algorithms.workspace() == 300);
  vgg::cuda::ConvAlgorithms& entry = cache.insert(a, algorithms);
  CHECK(cache.find(a) == &entry);
  CHECK(cache.find(same_shape_other_batch) == nullptr);
  CHECK(cache.find(other_shape) == nullptr);
  CHECK_THROWS_AS(cache.insert(a, algorithms), std::logic_error);
  for (int b = 1; b <= 20; ++b) cache.insert({vgg::ConvShape{1, 1, 2, 2}, b}, algorithms);  // growth keeps addresses
  CHECK(cache.find(a) == &entry);
  CHECK(cache.size() == 21);
  entry.forward.measured = true;  // a plan's update is the cache's
  CHECK(cache.find(a)->forward.measured);
}

TEST_CASE("without a usable device, a CUDA context or network says why instead of crashing") {
  const std::string problem = vgg::cuda::device_problem();
  if (problem.empty()) return;  // a device is present: the device suite covers this machine
  CHECK(problem.find("cudaGetDeviceCount") != std::string::npos);
  using Net = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 2>, vgg::Classifier<4, 3>>::on<vgg::cuda::Backend>;
  CHECK_THROWS_WITH_AS(Net(1), doctest::Contains("cudaGetDeviceCount"), std::runtime_error);
}
