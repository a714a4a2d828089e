// Built where vgg was configured with MPI: vgg::distributed, found through add_subdirectory or
// find_package, compiles a data-parallel step with the user's warnings.
#include <vgg/distributed.hpp>
#include <vgg/vgg.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

using Net = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4>, vgg::Classifier<8, 3>>;

int main(int argc, char** argv) {
  vgg::distributed::Environment mpi(argc, argv);
  Net net(1);
  vgg::Adam adam({.lr = 1e-3f});
  vgg::distributed::DataParallel dp(net, {.settings = {{"consumer", "1"}}});
  const std::vector<float> x(Net::input_shape.size(), 0.5f);
  const std::vector<std::int32_t> labels{1};
  const auto r = dp.step(adam, x, labels);
  if (dp.is_root()) std::printf("consumer_distributed: loss %.4f on %d rank(s)\n", r.loss, dp.size());
  return dp.in_sync() ? 0 : 1;
}
