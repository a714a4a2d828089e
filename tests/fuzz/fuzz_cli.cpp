// libFuzzer target: the vgg-train command line (tools/cli_options.hpp). The input is split at NUL
// bytes into arguments. Any exception other than UsageError, and any accepted option outside its
// documented range, is a finding.
#include "../../tools/cli_options.hpp"  // relative: the fuzz build needs no tools/ include path

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {
void require(bool condition) {
  if (!condition) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> args;
  for (std::size_t start = 0; start <= text.size();) {
    const std::size_t end = std::min(text.find('\0', start), text.size());
    args.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  try {
    const vgg_train::Options o = vgg_train::parse_args(args);
    if (o.help) return 0;
    require(o.epochs >= 1 && o.epochs <= vgg_train::kMaxEpochs);
    require(o.batch_size >= 1);
    require(o.threads >= 0 && o.threads <= vgg_train::kMaxThreads);
    require(o.lr > 0 && std::isfinite(o.lr));
    require(o.optimizer == "adam" || o.optimizer == "sgd");
    require(o.precision == "fp32" || o.precision == "bf16");
    require(!o.save.empty() && !o.log.empty() && !o.data.empty());
    require(!(o.resume && !o.evaluate.empty()));
    // Only the sizes vgg-train dispatches: a tv-* model at its instantiated pairs, the chapter's
    // net at widths 1 to 8 (its dispatch maps anything else to 8).
    require(std::find(std::begin(vgg_train::kModels), std::end(vgg_train::kModels), o.model) !=
            std::end(vgg_train::kModels));
    if (vgg_train::is_torchvision_model(o.model))
      require(std::any_of(std::begin(vgg_train::kTorchvisionSizes), std::end(vgg_train::kTorchvisionSizes),
                          [&](auto s) { return s.resize == o.resize && s.width_divisor == o.width_divisor; }));
    else
      require(o.width_divisor >= 1 && o.width_divisor <= 8);
    require(o.collective_timeout >= 0 && o.collective_timeout <= vgg_train::kMaxCollectiveTimeout);
    require(!(o.distributed && !o.evaluate.empty()));  // --device cuda with it is a run-time matter
    // The stored settings must read back as equal to themselves (the resume check).
    for (const auto& [key, value] : vgg_train::run_settings(o)) require(vgg_train::same_setting(key, value, value));
  } catch (const vgg_train::UsageError& e) {
    require(std::string_view(e.what()).size() > 0);
  }
  return 0;
}
