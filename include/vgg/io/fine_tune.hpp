#pragma once
// Fine-tuning: a network's weights taken from a checkpoint by tensor name, for a fresh run with a
// classifier of another size. The usual way pretrained VGG weights are used (torchvision's
// transfer-learning tutorial): every tensor is loaded as it is, except the last classifier layer,
// which is re-initialised when the checkpoint has another class count. Unlike load_weights, the
// architecture metadata is not compared (it names the class count); every tensor is checked by
// name and shape instead. Optimizer state and training counters in the file are ignored: a
// fine-tuning run starts its own.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "vgg/io/checkpoint.hpp"
#include "vgg/io/safetensors.hpp"
#include "vgg/layer.hpp"

namespace vgg::io {

struct FineTuneOptions {
  /// Re-initialise the last classifier layer when its class count differs from the network's;
  /// false refuses such a file like any other shape mismatch.
  bool reinit_last_layer = true;
  /// Seed of the re-initialisation: the last layer gets exactly what a fresh Net(seed) holds
  /// (PyTorch's default Linear init); net.seed() becomes `seed` then (net.reset_parameters).
  std::uint64_t seed = 0;
};

struct FineTuneResult {
  bool last_layer_reinitialised = false;
  std::string last_layer;              ///< module of the last layer, e.g. "fc.7"
  std::int64_t checkpoint_classes = 0; ///< the last layer's outputs in the file
  std::map<std::string, std::string> metadata;  ///< the file's __metadata__
};

/// Loads every parameter (and batch-norm state) of `net` from the tensor of the same name in the
/// checkpoint at `path` (written by save_weights or save_training_checkpoint, or by PyTorch through
/// tools/safetensors_torch.py with vgg's names). When the last layer's weight [C', H] and bias [C']
/// differ from the network's [C, H] and [C] in C alone, that layer is re-initialised instead
/// (options.reinit_last_layer). throws CheckpointError naming the tensor and expected vs found
/// shape for any other mismatch, a missing tensor, a tensor the network does not have (optimizer
/// and training tensors of a training checkpoint excepted), or a non-finite value; all or nothing:
/// the network is unchanged then.
template <class Net>
FineTuneResult load_for_fine_tuning(const std::filesystem::path& path, Net& net, const FineTuneOptions& options = {}) {
  const SafetensorsFile file = load_safetensors(path);
  FineTuneResult result;
  result.metadata = file.metadata();
  const auto format = file.metadata().find(kFormatKey);
  const bool training = format != file.metadata().end() && format->second == "training-1";

  struct Param {
    std::string name;
    std::vector<std::int64_t> shape;
    std::size_t offset, size;
  };
  std::vector<Param> params;
  std::size_t offset = 0;
  net.for_each_parameter([&](const ParameterView& p) {
    params.push_back({p.name, p.shape, offset, p.value.size()});
    offset += p.value.size();
  });
  // The last layer: its weight, then its bias (the last two tensors in network order).
  const Param& last_weight = params[params.size() - 2];
  const Param& last_bias = params.back();
  result.last_layer = last_weight.name.substr(0, last_weight.name.rfind('.'));

  // Names and shapes first, the last layer's class count apart. A file that names its architecture
  // (vgg's own checkpoints) says which, so another net's file is recognised as such.
  // A PyTorch export has no such metadata: its tensor count hints at another depth instead.
  const auto architecture = file.metadata().find(kArchitectureKey);
  std::size_t net_tensors = params.size();
  net.for_each_state([&](const StateView&) { ++net_tensors; });
  net.for_each_counter([&](const CounterView&) { ++net_tensors; });
  const std::string held = architecture != file.metadata().end()
                               ? "; the file holds the network '" + architecture->second + "', this one is '" +
                                     Net::architecture() + "'"
                               : "; the file holds " + std::to_string(file.names().size()) + " tensors, this network " +
                                     std::to_string(net_tensors);
  bool last_differs = false;
  for (const Param& p : params) {
    if (!file.contains(p.name))
      throw CheckpointError("checkpoint " + detail::quoted(path) + " cannot be fine-tuned from: it has no tensor '" +
                            p.name + "' (expected shape " + shape_to_string(p.shape) +
                            ", found none); tensors are matched by vgg's state_dict names (docs/CHECKPOINTS.md)" +
                            held);
    const TensorInfo& found = file.info(p.name);
    if (found.shape == p.shape) continue;
    const bool last = &p == &last_weight || &p == &last_bias;
    const bool classes_only = last && found.shape.size() == p.shape.size() && !found.shape.empty() &&
                              std::equal(found.shape.begin() + 1, found.shape.end(), p.shape.begin() + 1);
    if (!classes_only || !options.reinit_last_layer)
      throw CheckpointError("checkpoint " + detail::quoted(path) + " cannot be fine-tuned from: tensor '" + p.name +
                            "' expected shape " + shape_to_string(p.shape) + ", found " +
                            shape_to_string(found.shape) +
                            (classes_only ? " (another class count, and re-initialising the last layer is off)"
                                          : (last ? "" : " (another architecture: width or input size?)")) +
                            held);
    last_differs = true;
  }
  const auto weight_rows = file.info(last_weight.name).shape.front();
  const auto bias_rows = file.info(last_bias.name).shape.front();
  if (weight_rows != bias_rows)
    throw CheckpointError("checkpoint " + detail::quoted(path) + ": the last layer's weight '" + last_weight.name +
                          "' has " + std::to_string(weight_rows) + " rows but its bias '" + last_bias.name + "' " +
                          std::to_string(bias_rows) + " elements; the file is damaged");
  result.checkpoint_classes = weight_rows;
  result.last_layer_reinitialised = last_differs;

  // Anything else in the file would be silently dropped: a sign of another network.
  std::set<std::string> known;
  for (const Param& p : params) known.insert(p.name);
  net.for_each_state([&](const StateView& v) { known.insert(v.name); });
  net.for_each_counter([&](const CounterView& c) { known.insert(c.name); });
  std::string unexpected;
  int count = 0;
  for (const std::string& name : file.names()) {
    if (known.contains(name)) continue;
    if (training && (name.starts_with("optimizer.") || name.starts_with("train."))) continue;
    if (++count <= 8) unexpected += (count > 1 ? ", '" : "'") + name + "'";
  }
  if (count > 8) unexpected += ", ... (" + std::to_string(count - 8) + " more)";
  if (count > 0)
    throw CheckpointError("checkpoint " + detail::quoted(path) + " cannot be fine-tuned from: it holds tensors the "
                          "network does not have: " + unexpected);

  // Stage everything, then commit: a bad value leaves the network as it was.
  std::vector<float> staged(static_cast<std::size_t>(Net::num_params));
  std::vector<ParamMutRef> refs;
  for (const Param& p : params) {
    if (last_differs && (&p == &last_weight || &p == &last_bias)) continue;
    refs.push_back({p.name, p.shape, std::span<float>(staged).subspan(p.offset, p.size)});
  }
  load_parameters(file, refs, LoadPolicy{.allow_extra = true});
  for (const ParamMutRef& ref : refs) detail::require_finite(path, ref.name, ref.data, "weight");
  detail::HostState state;
  {
    const std::vector<ParamMutRef> state_refs = detail::state_refs(net, state);
    load_parameters(file, state_refs, LoadPolicy{.allow_extra = true});
    detail::finish_state(file, net, state_refs, state);
  }

  if (last_differs) {
    // Exactly a fresh network's last layer: re-draw every parameter from the seed (cheap next to
    // a pass), keep the last layer's values, and overwrite the rest below.
    net.reset_parameters(options.seed);
    const std::vector<float> fresh = detail::host_parameters(net);
    for (const Param* p : {&last_weight, &last_bias})
      std::copy_n(fresh.begin() + std::ptrdiff_t(p->offset), p->size, staged.begin() + std::ptrdiff_t(p->offset));
  }
  net.copy_parameters_from_host(staged);
  detail::commit_state(net, state);
  return result;
}

}  // namespace vgg::io
