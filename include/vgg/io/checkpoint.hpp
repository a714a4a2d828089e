#pragma once
// Network checkpoints in safetensors. Weights use the chapter's PyTorch state_dict names
// (vgg_block_1.0.weight, ..., fc.7.bias), so files move between PyTorch and vgg unchanged; the
// architecture is written into __metadata__ and checked on load. A training checkpoint adds the
// optimizer state per parameter (optimizer.<state>.<name>) and the counters needed to resume.
// Every save is atomic (temporary file, fsync, rename): see safetensors.hpp. A network whose
// backend keeps its memory off the host (B::host_memory false, e.g. vgg::cuda::Backend) is staged
// through host copies: the file is the same whichever backend wrote or reads it.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "vgg/io/safetensors.hpp"
#include "vgg/layer.hpp"
#include "vgg/optim/adam.hpp"
#include "vgg/optim/sgd.hpp"

namespace vgg::io {

inline constexpr const char* kArchitectureKey = "vgg.architecture";
inline constexpr const char* kFormatKey = "vgg.format";

/// Counters and settings a resumed training run needs besides weights and optimizer state. The
/// network's dropout seed is saved and restored as well (tensor train.network_seed).
struct TrainingState {
  std::int64_t epoch = 0;         ///< epochs completed
  std::int64_t network_step = 0;  ///< training forward passes (dropout masks derive from it)
  std::map<std::string, std::string> metadata;  ///< free-form: seed, batch size, data, ...
};

namespace detail {

template <class Net>
std::vector<ParamMutRef> parameter_refs(Net& net, const std::string& prefix = "") {
  std::vector<ParamMutRef> refs;
  net.for_each_parameter([&](const ParameterView& p) { refs.push_back({prefix + p.name, p.shape, p.value}); });
  return refs;
}

template <class Net>
void add_weight_records(Net& net, std::vector<TensorRecord>& records) {
  net.for_each_parameter(
      [&](const ParameterView& p) { records.push_back(tensor_record(p.name, p.shape, p.value)); });
}

/// A host copy of `flat`, which lives in backend B's memory.
template <class B>
std::vector<float> copy_to_host(std::span<const float> flat, typename B::Context& ctx) {
  std::vector<float> host(flat.size());
  B::copy_to_host(flat.data(), host.data(), flat.size(), ctx);
  return host;
}

/// Every parameter of `net` copied to the host, flat, in network order.
template <class Net>
std::vector<float> parameters_to_host(Net& net) {
  std::vector<float> host;
  host.reserve(std::size_t(Net::num_params));
  net.for_each_parameter_data([&](std::span<float> value, std::span<float>) {
    const std::size_t offset = host.size();
    host.resize(offset + value.size());
    Net::backend::copy_to_host(value.data(), host.data() + offset, value.size(), net.context());
  });
  return host;
}

/// Writes the flat host copy `host` (network order) into the parameters of `net`.
template <class Net>
void parameters_from_host(Net& net, std::span<const float> host) {
  std::size_t offset = 0;
  net.for_each_parameter_data([&](std::span<float> value, std::span<float>) {
    Net::backend::copy_from_host(host.data() + offset, value.data(), value.size(), net.context());
    offset += value.size();
  });
}

/// Optimizer state as (state name, flat buffer in network parameter order).
template <class B>
std::vector<std::pair<std::string, std::span<float>>> optimizer_state(Adam<B>& adam) {
  return {{"exp_avg", adam.first_moment()}, {"exp_avg_sq", adam.second_moment()}};
}
template <class B>
std::vector<std::pair<std::string, std::span<float>>> optimizer_state(Sgd<B>& sgd) {
  return {{"momentum_buffer", sgd.momentum_buffer()}};
}
template <class B>
std::string optimizer_name(const Adam<B>&) { return "adam"; }
template <class B>
std::string optimizer_name(const Sgd<B>&) { return "sgd"; }

/// Calls f(tensor name, shape, slice of flat) for each parameter of net, slicing `flat` in order.
template <class Net, class F>
void for_each_slice(Net& net, const std::string& prefix, std::span<float> flat, F&& f) {
  std::size_t offset = 0;
  net.for_each_parameter([&](const ParameterView& p) {
    f(prefix + p.name, p.shape, flat.subspan(offset, p.value.size()));
    offset += p.value.size();
  });
}

inline void check_architecture(const SafetensorsFile& file, const std::string& expected) {
  const auto& meta = file.metadata();
  const auto it = meta.find(kArchitectureKey);
  if (it != meta.end() && it->second != expected)
    throw CheckpointError("checkpoint " + quoted(file.path()) + " holds a network of architecture '" + it->second +
                          "', but the network being loaded is '" + expected + "'");
}

}  // namespace detail

/// Saves the network's parameters under their state_dict names, with the architecture in
/// __metadata__ (plus `metadata`). ensures: the previous file at `path` survives any failure.
template <class Net>
void save_weights(const std::filesystem::path& path, Net& net, std::map<std::string, std::string> metadata = {}) {
  metadata[kArchitectureKey] = Net::architecture();
  metadata[kFormatKey] = "weights-1";
  std::vector<TensorRecord> records;
  std::vector<float> host;  // a device network's parameters, staged on the host
  if constexpr (Net::backend::host_memory) {
    detail::add_weight_records(net, records);
  } else {
    host = detail::parameters_to_host(net);
    detail::for_each_slice(net, "", std::span<float>(host),
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             records.push_back(tensor_record(std::move(name), std::move(shape), slice));
                           });
  }
  save_safetensors(path, records, metadata);
}

/// Loads parameters saved by save_weights, by PyTorch (tools/safetensors_torch.py) or by
/// save_training_checkpoint (whose extra tensors are ignored here).
/// Throws CheckpointError naming the tensor and expected vs found shapes, any missing or (for a
/// plain weights file) unexpected tensor, or a different architecture; loads nothing then.
template <class Net>
std::map<std::string, std::string> load_weights(const std::filesystem::path& path, Net& net) {
  const SafetensorsFile file = load_safetensors(path);
  detail::check_architecture(file, Net::architecture());
  const auto format = file.metadata().find(kFormatKey);
  const bool training = format != file.metadata().end() && format->second == "training-1";
  if constexpr (Net::backend::host_memory) {
    const auto refs = detail::parameter_refs(net);
    load_parameters(file, refs, LoadPolicy{.allow_extra = training});
  } else {
    std::vector<float> host(std::size_t(Net::num_params));
    std::vector<ParamMutRef> refs;
    detail::for_each_slice(net, "", std::span<float>(host),
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             refs.push_back({std::move(name), std::move(shape), slice});
                           });
    load_parameters(file, refs, LoadPolicy{.allow_extra = training});
    detail::parameters_from_host(net, host);
  }
  return file.metadata();
}

/// Saves weights, optimizer state (optimizer.<state>.<parameter name>), the optimizer's step
/// count and the training counters, atomically.
template <class Net, class Optimizer>
void save_training_checkpoint(const std::filesystem::path& path, Net& net, Optimizer& optimizer,
                              const TrainingState& state) {
  std::map<std::string, std::string> metadata = state.metadata;
  metadata[kArchitectureKey] = Net::architecture();
  metadata[kFormatKey] = "training-1";
  metadata["vgg.optimizer"] = detail::optimizer_name(optimizer);
  optimizer.reserve(Net::num_params, net.context());
  std::vector<TensorRecord> records;
  std::vector<std::vector<float>> host;  // a device network's parameters and state, staged on the host
  if constexpr (Net::backend::host_memory) {
    detail::add_weight_records(net, records);
  } else {
    host.push_back(detail::parameters_to_host(net));
    detail::for_each_slice(net, "", std::span<float>(host.back()),
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             records.push_back(tensor_record(std::move(name), std::move(shape), slice));
                           });
  }
  for (auto& [state_name, state_flat] : detail::optimizer_state(optimizer)) {
    std::span<float> flat = state_flat;
    if constexpr (!Net::backend::host_memory) {
      host.push_back(detail::copy_to_host<typename Net::backend>(flat, net.context()));
      flat = host.back();
    }
    detail::for_each_slice(net, "optimizer." + state_name + ".", flat,
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             records.push_back(tensor_record(std::move(name), std::move(shape), slice));
                           });
  }
  const std::int64_t counters[4] = {state.epoch, state.network_step, optimizer.steps(),
                                    std::int64_t(net.seed())};  // the bits of the uint64 seed
  records.push_back(tensor_record("train.epoch", {}, std::span<const std::int64_t>(counters, 1)));
  records.push_back(tensor_record("train.network_step", {}, std::span<const std::int64_t>(counters + 1, 1)));
  records.push_back(tensor_record("optimizer.step", {}, std::span<const std::int64_t>(counters + 2, 1)));
  records.push_back(tensor_record("train.network_seed", {}, std::span<const std::int64_t>(counters + 3, 1)));
  save_safetensors(path, records, metadata);
}

/// Restores what save_training_checkpoint wrote into `net` and `optimizer` (whose kind must match
/// the file's) and returns the training counters. All or nothing: everything is validated first.
template <class Net, class Optimizer>
TrainingState load_training_checkpoint(const std::filesystem::path& path, Net& net, Optimizer& optimizer) {
  const SafetensorsFile file = load_safetensors(path);
  detail::check_architecture(file, Net::architecture());
  const auto& meta = file.metadata();
  const auto format = meta.find(kFormatKey);
  if (format == meta.end() || format->second != "training-1")
    throw CheckpointError("checkpoint " + detail::quoted(path) +
                          " is not a training checkpoint (no optimizer state); it can only be loaded as weights");
  const auto kind = meta.find("vgg.optimizer");
  if (kind == meta.end() || kind->second != detail::optimizer_name(optimizer))
    throw CheckpointError("checkpoint " + detail::quoted(path) + " holds the state of optimizer '" +
                          (kind == meta.end() ? std::string("?") : kind->second) + "', but training uses '" +
                          detail::optimizer_name(optimizer) + "'");
  optimizer.reserve(Net::num_params, net.context());
  // Stage everything in temporaries first so that a bad file changes nothing.
  const std::vector<float> staged_weights = [&] {
    std::vector<float> all(std::size_t(Net::num_params));
    std::vector<ParamMutRef> refs;
    std::size_t offset = 0;
    net.for_each_parameter([&](const ParameterView& p) {
      refs.push_back({p.name, p.shape, std::span<float>(all).subspan(offset, p.value.size())});
      offset += p.value.size();
    });
    load_parameters(file, refs, LoadPolicy{.allow_extra = true});
    return all;
  }();
  std::vector<std::vector<float>> staged_state;
  for (auto& [state_name, flat] : detail::optimizer_state(optimizer)) {
    staged_state.emplace_back(flat.size());
    std::vector<ParamMutRef> refs;
    detail::for_each_slice(net, "optimizer." + state_name + ".", std::span<float>(staged_state.back()),
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             refs.push_back({std::move(name), std::move(shape), slice});
                           });
    load_parameters(file, refs, LoadPolicy{.allow_extra = true});
  }
  std::int64_t epoch = 0, network_step = 0, optimizer_step = 0, network_seed = 0;
  const std::span<const std::int64_t> scalar{};
  file.read<std::int64_t>("train.epoch", std::span<std::int64_t>(&epoch, 1), scalar);
  file.read<std::int64_t>("train.network_step", std::span<std::int64_t>(&network_step, 1), scalar);
  file.read<std::int64_t>("optimizer.step", std::span<std::int64_t>(&optimizer_step, 1), scalar);
  file.read<std::int64_t>("train.network_seed", std::span<std::int64_t>(&network_seed, 1), scalar);

  // Commit.
  detail::parameters_from_host(net, staged_weights);
  std::size_t i = 0;
  for (auto& [state_name, flat] : detail::optimizer_state(optimizer)) {
    Net::backend::copy_from_host(staged_state[i].data(), flat.data(), flat.size(), net.context());
    ++i;
  }
  optimizer.set_steps(optimizer_step);
  net.set_step(std::uint64_t(network_step));
  net.set_seed(std::uint64_t(network_seed));
  TrainingState state{epoch, network_step, {}};
  for (const auto& [k, v] : meta)
    if (k.rfind("vgg.", 0) != 0) state.metadata[k] = v;
  return state;
}

}  // namespace vgg::io
