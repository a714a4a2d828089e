#pragma once
// CPU kernels: batch norm + ReLU over an NCHW batch (training: batch statistics), and a batch norm
// folded into the conv before it (eval: running statistics). Threads split the channels (each
// channel's statistics are one reduction over batch x plane values); the loops over a plane are
// unit-stride and vectorise. The arithmetic is elementwise.hpp's, shared with the CUDA backend.

#include <omp.h>

#include <cstddef>

#include "vgg/backend.hpp"
#include "vgg/elementwise.hpp"

namespace vgg::cpu {

/// Training forward: per channel, the batch mean and biased variance (two passes, summed in double
/// as ATen does), the running statistics updated, then y = relu(z * scale + shift).
/// requires: n * s.plane >= 2; z and y hold n x channels x plane floats.
inline void batchnorm_relu_forward(const BatchNormShape& s, const float* z, const BatchNormTensors& t, float* y, int n,
                                   int threads) {
  const long count = long(n) * s.plane, plane = s.plane;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int c = 0; c < s.channels; ++c) {
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
      const float* zc = z + (long(i) * s.channels + c) * plane;
#pragma omp simd reduction(+ : sum)
      for (long p = 0; p < plane; ++p) sum += double(zc[p]);
    }
    const float mean = elementwise::batchnorm_mean(sum, count);
    double squares = 0.0;
    for (int i = 0; i < n; ++i) {
      const float* zc = z + (long(i) * s.channels + c) * plane;
#pragma omp simd reduction(+ : squares)
      for (long p = 0; p < plane; ++p) squares += double(elementwise::squared_deviation(zc[p], mean));
    }
    elementwise::batchnorm_statistics(mean, squares, count, s.momentum, s.eps, t.saved_mean[c], t.saved_invstd[c],
                                      t.running_mean[c], t.running_var[c]);
    const float scale = elementwise::batchnorm_scale(t.weight[c], t.saved_invstd[c]);
    const float shift = elementwise::batchnorm_shift(t.bias[c], mean, scale);
    for (int i = 0; i < n; ++i) {
      const long offset = (long(i) * s.channels + c) * plane;
      const float* zc = z + offset;
      float* yc = y + offset;
#pragma omp simd
      for (long p = 0; p < plane; ++p) yc[p] = elementwise::batchnorm_relu(zc[p], scale, shift);
    }
  }
}

/// Training backward of y = relu(batchnorm(z)) with the statistics the forward saved: per channel,
/// dbeta = sum(dyhat) and dgamma = sum(dyhat * (z - mean)) * invstd with dyhat the gradient behind
/// the ReLU, then dz. dz may be dy (in place: each element is read before it is written).
inline void batchnorm_relu_backward(const BatchNormShape& s, const float* z, const float* y, const float* dy,
                                    const BatchNormTensors& t, float* dz, float* weight_grad, float* bias_grad, int n,
                                    int threads) {
  const long count = long(n) * s.plane, plane = s.plane;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int c = 0; c < s.channels; ++c) {
    const float mean = t.saved_mean[c], invstd = t.saved_invstd[c];
    double sum = 0.0, dot = 0.0;
    for (int i = 0; i < n; ++i) {
      const long offset = (long(i) * s.channels + c) * plane;
      const float *zc = z + offset, *yc = y + offset, *dyc = dy + offset;
#pragma omp simd reduction(+ : sum, dot)
      for (long p = 0; p < plane; ++p) {
        const float g = elementwise::relu_gradient(dyc[p], yc[p]);
        sum += double(g);
        dot += double(g) * double(zc[p] - mean);
      }
    }
    const float gamma_grad = float(dot) * invstd, beta_grad = float(sum);
    weight_grad[c] = gamma_grad;
    bias_grad[c] = beta_grad;
    const float gamma = t.weight[c];
    for (int i = 0; i < n; ++i) {
      const long offset = (long(i) * s.channels + c) * plane;
      const float *zc = z + offset, *yc = y + offset, *dyc = dy + offset;
      float* dzc = dz + offset;
#pragma omp simd
      for (long p = 0; p < plane; ++p)
        dzc[p] = elementwise::batchnorm_input_gradient(elementwise::relu_gradient(dyc[p], yc[p]), zc[p], mean, invstd,
                                                       gamma, gamma_grad, beta_grad, count);
    }
  }
}

/// Eval: folded_weight = weight * scale and folded_bias = (bias - running_mean) * scale + beta per
/// output channel, scale = gamma / sqrt(running_var + eps). weight is channels x fan_in.
inline void batchnorm_fold(const BatchNormShape& s, const float* weight, const float* bias, long fan_in,
                           const BatchNormTensors& t, float* folded_weight, float* folded_bias, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (long(s.channels) * fan_in > 65536)
  for (int c = 0; c < s.channels; ++c) {
    const float scale = elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], s.eps);
    const float* wc = weight + c * fan_in;
    float* fc = folded_weight + c * fan_in;
#pragma omp simd
    for (long k = 0; k < fan_in; ++k) fc[k] = wc[k] * scale;
    folded_bias[c] = elementwise::batchnorm_folded_bias(bias[c], t.bias[c], t.running_mean[c], scale);
  }
}

/// Eval backward: the gradients of the conv's weight and bias and of gamma and beta from those of
/// the folded conv (the running statistics are constants): dW = dW' * scale, db = db' * scale,
/// dgamma = (sum_k dW'[k] W[k] + db' (b - running_mean)) / sqrt(running_var + eps), dbeta = db'.
inline void batchnorm_fold_backward(const BatchNormShape& s, const float* weight, const float* bias, long fan_in,
                                    const BatchNormTensors& t, const float* folded_weight_grad,
                                    const float* folded_bias_grad, float* weight_grad, float* bias_grad,
                                    float* gamma_grad, float* beta_grad, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (long(s.channels) * fan_in > 65536)
  for (int c = 0; c < s.channels; ++c) {
    const float scale = elementwise::batchnorm_fold_scale(t.weight[c], t.running_var[c], s.eps);
    const float invstd = elementwise::batchnorm_fold_scale(1.0f, t.running_var[c], s.eps);
    const float* wc = weight + c * fan_in;
    const float* gc = folded_weight_grad + c * fan_in;
    float* dwc = weight_grad + c * fan_in;
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (long k = 0; k < fan_in; ++k) {
      const float g = gc[k];  // read once: dwc may be gc (in place)
      dot += double(g) * double(wc[k]);
      dwc[k] = g * scale;
    }
    const float db = folded_bias_grad[c];
    bias_grad[c] = db * scale;
    gamma_grad[c] = float((dot + double(db) * double(bias[c] - t.running_mean[c])) * double(invstd));
    beta_grad[c] = db;
  }
}

}  // namespace vgg::cpu
