#pragma once
// Learning-rate schedules as in torch.optim.lr_scheduler, evaluated per epoch: the caller sets
// optimizer.set_lr(schedule(epoch)) at the start of each epoch.

#include <cmath>
#include <numbers>

namespace vgg {

/// StepLR: lr * gamma^(epoch / step_size).
struct StepSchedule {
  float base_lr;
  int step_size;
  float gamma = 0.1f;
  float operator()(int epoch) const { return base_lr * std::pow(gamma, float(epoch / step_size)); }
};

/// CosineAnnealingLR (closed form): eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2.
struct CosineSchedule {
  float base_lr;
  int t_max;
  float eta_min = 0.0f;
  float operator()(int epoch) const {
    return eta_min + (base_lr - eta_min) * 0.5f * (1.0f + std::cos(std::numbers::pi_v<float> * float(epoch) / float(t_max)));
  }
};

}  // namespace vgg
