#include <vgg/vgg.hpp>

#include <cstdio>

using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 8>;
static_assert(Net::feature_shape == vgg::Shape{64, 1, 1});

int main() {
  Net net(1);
  vgg::Tensor4 x(2, 1, 32, 32);
  x.setConstant(0.5f);
  const auto logits = net.forward(x);
  std::printf("consumer: logits %ld x %ld\n", long(logits.dimension(0)), long(logits.dimension(1)));
  return logits.dimension(0) == 2 && logits.dimension(1) == 10 ? 0 : 1;
}
