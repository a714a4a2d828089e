#include <vgg/vgg.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 8>;
static_assert(Net::feature_shape == vgg::Shape{64, 1, 1});

int main() {
  Net net(1);
  vgg::Tensor4 x(2, 1, 32, 32);
  x.setConstant(0.5f);
  const auto logits = net.forward(x);
  std::printf("consumer: logits %ld x %ld\n", long(logits.dimension(0)), long(logits.dimension(1)));
  if (logits.dimension(0) != 2 || logits.dimension(1) != 10) return 1;
  // A training step too, so that every kernel (backward passes, optimizer) is compiled here.
  vgg::Adam adam({.lr = 1e-3f});
  const std::vector<std::int32_t> labels{1, 2};
  const auto r = vgg::train_step(net, adam, {x.data(), std::size_t(x.size())}, labels);
  std::printf("consumer: training loss %.4f\n", r.loss);
  return r.loss > 0 ? 0 : 1;
}
