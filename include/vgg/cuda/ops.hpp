#pragma once
// The element-wise kernels of the CUDA backend, one functor per kernel: op(i) does all the work of
// index i of the kernel's index space (launch.hpp runs it on the device for i in [0, op.count())).
// They are __host__ __device__ and use no CUDA API, so the unit tests run the very same functors
// on the host over the same index space and compare with the CPU backend: the indexing and the
// arithmetic of every kernel are tested on every machine, GPU or not.

#include <cmath>
#include <cstdint>

#include "vgg/backend.hpp"
#include "vgg/elementwise.hpp"

namespace vgg::cuda::ops {

/// max as std::max (a < b ? b : a) on numbers, and NaN when either is NaN (the later one when both
/// are), as PyTorch's max-pool and the CPU kernels propagate it.
VGG_HOST_DEVICE inline float max_of(float a, float b) { return a < b || b != b ? b : a; }

/// y = y + bias[channel], then max(y, 0) when relu; channel = (i / plane) % channels. A linear
/// layer's output is batch x features (plane 1); a conv's is batch x channels x plane.
struct BiasRelu {
  float* y;
  const float* bias;
  long total;
  long plane;
  int channels;
  bool relu;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const float v = y[i] + bias[(i / plane) % channels];
    y[i] = relu ? (v < 0.0f ? 0.0f : v) : v;  // as std::max(v, 0.0f): NaN passes, as in torch's ReLU
  }
};

/// dy = dy where y > 0, else 0 (the gradient behind a ReLU whose output is y), in place.
struct ReluBackward {
  const float* y;
  float* dy;
  long total;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const { dy[i] = y[i] <= 0.0f ? 0.0f : dy[i]; }  // NaN passes
};

/// Inverted dropout (forward; the backward is the same op on the gradient): the mask is the CPU's
/// counter-based hash of (seed, stream, i), so CPU and GPU masks are bit-identical.
struct Dropout {
  const float* x;
  float* y;
  long total;
  float p, scale;
  std::uint64_t seed, stream;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const {
    y[i] = elementwise::dropout(x[i], seed, stream, std::uint64_t(i), p, scale);
  }
};

struct AdamUpdate {
  float* p;
  const float* g;
  float* m;
  float* v;
  long total;
  AdamStep step;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const { elementwise::adam(p[i], g[i], m[i], v[i], step); }
};

struct SgdUpdate {
  float* p;
  const float* g;
  float* momentum;
  long total;
  SgdStep step;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const { elementwise::sgd(p[i], g[i], momentum[i], step); }
};

/// 2x2 max-pool, stride 2, floor rule: index i is one output element of planes x (h/2) x (w/2).
struct MaxPoolForward {
  const float* x;
  float* y;
  long planes;
  int h, w;
  VGG_HOST_DEVICE long count() const { return planes * long(h / 2) * long(w / 2); }
  VGG_HOST_DEVICE void operator()(long i) const {
    const int ow = w / 2, oh = h / 2;
    const long p = i / (long(oh) * ow);
    const int r = int(i / ow % oh), c = int(i % ow);
    const float* top = x + p * long(h) * w + long(2 * r) * w + 2 * c;
    y[i] = max_of(max_of(top[0], top[1]), max_of(top[w], top[w + 1]));
  }
};

/// AdaptiveAvgPool2d((oh, ow)): index i is one output element of planes x oh x ow.
struct AdaptiveAvgPoolForward {
  const float* x;
  float* y;
  long planes;
  int h, w, oh, ow;
  VGG_HOST_DEVICE long count() const { return planes * long(oh) * ow; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const long p = i / (long(oh) * ow);
    const int r = int(i / ow % oh), c = int(i % ow);
    y[i] = elementwise::adaptive_avgpool(x + p * long(h) * w, h, w, oh, ow, r, c);
  }
};

/// Its backward: index i is one INPUT element of planes x h x w (a gather over the bins that
/// contain it: no atomics, no zeroing).
struct AdaptiveAvgPoolBackward {
  const float* dy;
  float* dx;
  long planes;
  int h, w, oh, ow;
  VGG_HOST_DEVICE long count() const { return planes * long(h) * w; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const long p = i / (long(h) * w);
    const int r = int(i / w % h), c = int(i % w);
    dx[i] = elementwise::adaptive_avgpool_input_grad(dy + p * long(oh) * ow, h, w, oh, ow, r, c);
  }
};

/// Backward of the 2x2 max-pool: index i is one INPUT element of planes x h x w (a gather, so no
/// atomics and no separate zeroing). Its window's gradient reaches it when it is the window's
/// winner: the first maximum in row-major order, as PyTorch and the CPU kernels choose. Rows and
/// columns dropped by the floor rule get 0. With relu_mask (x is a ReLU output), a window whose
/// maximum is not positive passes nothing: dx is then also the gradient behind that ReLU.
struct MaxPoolBackward {
  const float* x;
  const float* dy;
  float* dx;
  long planes;
  int h, w;
  bool relu_mask;
  VGG_HOST_DEVICE long count() const { return planes * long(h) * w; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const int oh = h / 2, ow = w / 2;
    const long p = i / (long(h) * w);
    const int r = int(i / w % h), c = int(i % w);
    if (r >= 2 * oh || c >= 2 * ow) {
      dx[i] = 0.0f;
      return;
    }
    const float* top = x + p * long(h) * w + long(r & ~1) * w + (c & ~1);
    const float a = top[0], b = top[1], d0 = top[w], d1 = top[w + 1];
    const float m = max_of(max_of(a, b), max_of(d0, d1));
    // Slot of the winner: the first of a, b, d0, d1 equal to the maximum; in a window holding NaN,
    // the last NaN (PyTorch's CPU rule, which the CPU kernels follow).
    const int winner = m == m ? (a == m ? 0 : b == m ? 1 : d0 == m ? 2 : 3)
                              : (d1 != d1 ? 3 : d0 != d0 ? 2 : b != b ? 1 : 0);
    const int slot = (r & 1) * 2 + (c & 1);
    const bool passes = !relu_mask || !(m <= 0.0f);  // a NaN maximum passes the ReLU's mask
    dx[i] = slot == winner && passes ? dy[p * long(oh) * ow + long(r / 2) * ow + c / 2] : 0.0f;
  }
};

/// Softmax cross-entropy of one sample (index i of the batch), as vgg::softmax_cross_entropy: the
/// sample's loss (log-sum-exp in double) and whether its arg-max (first maximum) is its label; with
/// grad, (softmax - one_hot) / batch. Labels were checked on the host.
struct SoftmaxCrossEntropy {
  const float* logits;
  const std::int32_t* labels;
  float* grad;  // may be null
  double* loss;
  int* correct;
  int batch, classes;
  VGG_HOST_DEVICE long count() const { return batch; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const float* z = logits + i * classes;
    const int label = labels[i];
    int best = 0;
    for (int c = 1; c < classes; ++c)
      if (z[c] > z[best]) best = c;
    const float zmax = z[best];
    double sum = 0;
    for (int c = 0; c < classes; ++c) sum += exp(double(z[c] - zmax));
    const double log_sum = log(sum);
    loss[i] = log_sum - double(z[label] - zmax);
    correct[i] = best == label;
    if (grad) {
      float* g = grad + i * classes;
      for (int c = 0; c < classes; ++c) {
        const double q = exp(double(z[c] - zmax) - log_sum);
        g[c] = float((q - (c == label ? 1.0 : 0.0)) / double(batch));
      }
    }
  }
};

/// Sets *flag to 1 when x[i] is NaN or infinite (x - x is 0 exactly for finite x).
struct FindNonFinite {
  const float* x;
  int* flag;
  long total;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const {
    if (!(x[i] - x[i] == 0.0f)) *flag = 1;
  }
};

/// Bias gradient of a linear layer: db[j] = sum over the batch of dz[b][j]; index i is the feature j.
struct LinearBiasGrad {
  const float* dz;
  float* db;
  int batch, features;
  VGG_HOST_DEVICE long count() const { return features; }
  VGG_HOST_DEVICE void operator()(long j) const {
    float sum = 0.0f;
    for (int b = 0; b < batch; ++b) sum += dz[long(b) * features + j];
    db[j] = sum;
  }
};

// ---- batch norm: the arithmetic is elementwise.hpp's, shared with the CPU backend ----
// A channel's reductions (index space: channels) run on the device as one thread block per channel
// (batchnorm.hpp) over the functor's value / contribution and finish; op(c) runs the same steps for
// channel c serially, which is how the tests run them on the host.

/// Training statistics of channel c: mean (first pass), squared deviations (second pass), then the
/// saved mean and inverse standard deviation and the running statistics.
struct BatchNormStatistics {
  const float* z;
  int batch, channels;
  long plane;
  BatchNormTensors t;
  float momentum, eps;
  VGG_HOST_DEVICE long count() const { return channels; }
  VGG_HOST_DEVICE long values() const { return long(batch) * plane; }
  VGG_HOST_DEVICE float value(int c, long j) const { return z[elementwise::channel_index(c, j, plane, channels)]; }
  VGG_HOST_DEVICE float deviation(int c, long j, float mean) const {
    return elementwise::squared_deviation(value(c, j), mean);
  }
  VGG_HOST_DEVICE void finish(int c, float mean, double squares) const {
    elementwise::batchnorm_statistics(mean, squares, values(), momentum, eps, t.saved_mean[c], t.saved_invstd[c],
                                      t.running_mean[c], t.running_var[c]);
  }
  VGG_HOST_DEVICE void operator()(long c) const {
    double sum = 0.0;
    for (long j = 0; j < values(); ++j) sum += double(value(int(c), j));
    const float mean = elementwise::batchnorm_mean(sum, values());
    double squares = 0.0;
    for (long j = 0; j < values(); ++j) squares += double(deviation(int(c), j, mean));
    finish(int(c), mean, squares);
  }
};

/// y = relu(z * scale + shift) per element, with the channel's saved statistics.
struct BatchNormRelu {
  const float* z;
  float* y;
  long total, plane;
  int channels;
  BatchNormTensors t;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const int c = elementwise::channel_of(i, plane, channels);
    const float scale = elementwise::batchnorm_scale(t.weight[c], t.saved_invstd[c]);
    y[i] = elementwise::batchnorm_relu(z[i], scale, elementwise::batchnorm_shift(t.bias[c], t.saved_mean[c], scale));
  }
};

/// The gradient sums of channel c: beta's gradient sum(dyhat) and gamma's sum(dyhat * (z - mean)) *
/// invstd, dyhat being the gradient behind the ReLU.
struct BatchNormGradientSums {
  const float *z, *y, *dy;
  int batch, channels;
  long plane;
  BatchNormTensors t;
  float *weight_grad, *bias_grad;
  VGG_HOST_DEVICE long count() const { return channels; }
  VGG_HOST_DEVICE long values() const { return long(batch) * plane; }
  /// Value j's terms of the two sums.
  VGG_HOST_DEVICE void contribution(int c, long j, double& sum, double& dot) const {
    const long i = elementwise::channel_index(c, j, plane, channels);
    const float g = elementwise::relu_gradient(dy[i], y[i]);
    sum += double(g);
    dot += double(g) * double(z[i] - t.saved_mean[c]);
  }
  VGG_HOST_DEVICE void finish(int c, double sum, double dot) const {
    weight_grad[c] = float(dot) * t.saved_invstd[c];
    bias_grad[c] = float(sum);
  }
  VGG_HOST_DEVICE void operator()(long c) const {
    double sum = 0.0, dot = 0.0;
    for (long j = 0; j < values(); ++j) contribution(int(c), j, sum, dot);
    finish(int(c), sum, dot);
  }
};

/// dz per element from the channel's gradient sums (dz may be dy: each element reads its own only).
struct BatchNormInputGradient {
  const float *z, *y, *dy;
  float* dz;
  long total, plane;
  int channels;
  BatchNormTensors t;
  const float *weight_grad, *bias_grad;
  VGG_HOST_DEVICE long count() const { return total; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const int c = elementwise::channel_of(i, plane, channels);
    dz[i] = elementwise::batchnorm_input_gradient(elementwise::relu_gradient(dy[i], y[i]), z[i], t.saved_mean[c],
                                                  t.saved_invstd[c], t.weight[c], weight_grad[c], bias_grad[c],
                                                  total / channels);
  }
};

/// Eval: folded_weight = weight * scale per element of the channels x fan_in weights.
struct BatchNormFoldWeights {
  const float* weight;
  float* folded_weight;
  long fan_in;
  int channels;
  BatchNormTensors t;
  float eps;
  VGG_HOST_DEVICE long count() const { return fan_in * channels; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const long c = i / fan_in;
    folded_weight[i] = weight[i] * elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], eps);
  }
};

/// Eval: the folded bias of channel c.
struct BatchNormFoldBias {
  const float* bias;
  float* folded_bias;
  int channels;
  BatchNormTensors t;
  float eps;
  VGG_HOST_DEVICE long count() const { return channels; }
  VGG_HOST_DEVICE void operator()(long c) const {
    const float scale = elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], eps);
    folded_bias[c] = elementwise::batchnorm_folded_bias(bias[c], t.bias[c], t.running_mean[c], scale);
  }
};

/// Eval backward, channel c: gamma's and beta's gradients and the conv bias's, from the folded
/// conv's (bias_grad may be folded_bias_grad). Runs before BatchNormUnfoldWeightGradients, which may
/// overwrite the folded weight gradient that this one reads.
struct BatchNormUnfoldChannelGradients {
  const float *weight, *bias, *folded_weight_grad, *folded_bias_grad;
  float *bias_grad, *gamma_grad, *beta_grad;
  long fan_in;
  int channels;
  BatchNormTensors t;
  float eps;
  VGG_HOST_DEVICE long count() const { return channels; }
  VGG_HOST_DEVICE void operator()(long c) const {
    double dot = 0.0;
    for (long k = 0; k < fan_in; ++k) dot += double(folded_weight_grad[c * fan_in + k]) * double(weight[c * fan_in + k]);
    const float db = folded_bias_grad[c];
    const float invstd = elementwise::batchnorm_fold_scale(1.0f, t.running_var[c], eps);
    bias_grad[c] = db * elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], eps);
    gamma_grad[c] = float((dot + double(db) * double(bias[c] - t.running_mean[c])) * double(invstd));
    beta_grad[c] = db;
  }
};

/// Eval backward: the conv weight's gradient, dW' * scale per element (in place allowed).
struct BatchNormUnfoldWeightGradients {
  const float* folded_weight_grad;
  float* weight_grad;
  long fan_in;
  int channels;
  BatchNormTensors t;
  float eps;
  VGG_HOST_DEVICE long count() const { return fan_in * channels; }
  VGG_HOST_DEVICE void operator()(long i) const {
    const long c = i / fan_in;
    weight_grad[i] = folded_weight_grad[i] * elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], eps);
  }
};

/// One column-major SGEMM as BLAS defines it: c (m x n, leading dimension ldc) =
/// op(a) (m x k) * op(b) (k x n), op transposing when asked. The backend hands it to cuBLAS; the
/// tests hand the same call to a host reference, so the row-major-to-column-major mapping of every
/// linear product is tested without a GPU.
struct Gemm {
  bool transpose_a, transpose_b;
  int m, n, k;
  const float* a;
  int lda;
  const float* b;
  int ldb;
  float* c;
  int ldc;
};

// Row-major x (batch x in), y and dz (batch x out) and W (out x in, PyTorch's layout) are, read
// column-major, x^T (in x batch), y^T and dz^T (out x batch) and W^T (in x out).

/// y = x W^T, i.e. y^T (out x batch) = W (out x in) * x^T (in x batch).
inline Gemm linear_forward_gemm(const float* x, const float* weight, float* y, int batch, int in, int out) {
  return {true, false, out, batch, in, weight, in, x, in, y, out};
}
/// dW = dz^T x, i.e. dW^T (in x out) = x^T (in x batch) * dz (batch x out).
inline Gemm linear_weight_grad_gemm(const float* x, const float* dz, float* weight_grad, int batch, int in, int out) {
  return {false, true, in, out, batch, x, in, dz, out, weight_grad, in};
}
/// dx = dz W, i.e. dx^T (in x batch) = W^T (in x out) * dz^T (out x batch).
inline Gemm linear_input_grad_gemm(const float* weight, const float* dz, float* dx, int batch, int in, int out) {
  return {false, false, in, batch, out, weight, in, dz, out, dx, in};
}

}  // namespace vgg::cuda::ops
