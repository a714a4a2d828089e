#pragma once
// Network checkpoints in safetensors. Weights use the chapter's PyTorch state_dict names
// (vgg_block_1.0.weight, ..., fc.7.bias), so files move between PyTorch and vgg unchanged; a
// batch-norm network adds its state as PyTorch's state_dict has it (vgg_block_1.1.running_mean,
// ...running_var F32, ...num_batches_tracked I64 []), never touched by the optimizer; the
// architecture is written into __metadata__ and checked on load. A training checkpoint adds the
// optimizer state per parameter (optimizer.<state>.<name>) and the counters needed to resume.
// Every save is atomic (temporary file, fsync, rename): see safetensors.hpp.

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "vgg/health.hpp"
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

/// The largest epoch count a checkpoint may hold: epochs are ints in training loops, and a
/// larger value read from a damaged file would wrap (2^31 -> -2^31, 2^32 -> 0).
inline constexpr std::int64_t kMaxCheckpointEpoch = std::numeric_limits<std::int32_t>::max();

namespace detail {

// Checkpoints are written once for every backend: parameters and optimizer state live in the
// backend's memory and cross to the host here, for saving and loading only.

/// The network's parameters as loader bindings, read in place: host-memory backends only.
template <class Net>
  requires Net::backend::host_memory
std::vector<ParamMutRef> parameter_refs(Net& net, const std::string& prefix = "") {
  std::vector<ParamMutRef> refs;
  net.for_each_parameter([&](const ParameterView& p) { refs.push_back({prefix + p.name, p.shape, p.value}); });
  return refs;
}

/// Every parameter of net copied to the host, in network order.
template <class Net>
std::vector<float> host_parameters(Net& net) {
  std::vector<float> host(static_cast<std::size_t>(Net::num_params));
  net.copy_parameters_to_host(host);
  return host;
}

/// A flat optimizer state buffer (in the backend's memory) copied to the host.
template <class Net>
std::vector<float> host_copy(Net& net, std::span<const float> state) {
  std::vector<float> host(state.size());
  Net::backend::copy_to_host(state.data(), host.data(), state.size(), net.context());
  return host;
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

/// Calls f(tensor name, shape, slice of flat) for each parameter of net, slicing `flat` (a host
/// buffer in network order) in order.
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

/// Architecture check for files without architecture metadata (PyTorch exports, hand-made
/// files): a tensor of the network's with another shape means another architecture. Reported
/// before any list of missing or unexpected tensors, which would bury the actual cause.
template <class Net>
void check_shapes_fit(const SafetensorsFile& file, Net& net) {
  std::string mismatched;
  int count = 0;
  net.for_each_parameter([&](const ParameterView& p) {
    if (!file.contains(p.name)) return;
    const TensorInfo& found = file.info(p.name);
    if (found.shape == p.shape) return;
    if (++count <= 4)
      mismatched += (count > 1 ? ", '" : "'") + p.name + "' expected " + shape_to_string(p.shape) + ", found " +
                    shape_to_string(found.shape);
  });
  if (count == 0) return;
  if (count > 4) mismatched += ", ... (" + std::to_string(count - 4) + " more)";
  throw CheckpointError("checkpoint " + quoted(file.path()) + " has no architecture metadata and holds a network of "
                        "another architecture than '" + Net::architecture() + "' (another --width-divisor or "
                        "--resize?): " + std::to_string(count) + " tensor(s) have other shapes: " + mismatched);
}

/// Refuses NaN and infinite values, naming the tensor: such a file came from a diverged run or
/// was damaged, and training or evaluating from it only produces NaN.
inline void require_finite(const std::filesystem::path& path, const std::string& tensor, std::span<const float> values,
                           const char* what) {
  if (const auto bad = first_non_finite(values))
    throw CheckpointError("checkpoint " + quoted(path) + ": " + what + " tensor '" + tensor + "' holds " +
                          describe_value(values[*bad]) + " at element " + std::to_string(*bad) +
                          "; the file is damaged or was saved from a run that had diverged");
}

template <class Net>
void require_finite_weights(const std::filesystem::path& path, Net& net) {
  std::vector<float> host = host_parameters(net);
  for_each_slice(net, "", host, [&](const std::string& name, const std::vector<std::int64_t>&, std::span<float> v) {
    require_finite(path, name, v, "weight");
  });
}

/// The network's state that is not parameters (batch norm's running statistics, copied to the
/// host, and its counters), as saved beside the weights.
struct HostState {
  std::vector<float> values;           // for_each_state order
  std::vector<std::int64_t> counters;  // for_each_counter order
};

template <class Net>
HostState host_state(Net& net) {
  HostState state;
  state.values.resize(static_cast<std::size_t>(Net::num_state));
  std::size_t offset = 0;
  net.for_each_state([&](const StateView& v) {
    Net::backend::copy_to_host(v.value.data(), state.values.data() + offset, v.value.size(), net.context());
    offset += v.value.size();
  });
  net.for_each_counter([&](const CounterView& c) { state.counters.push_back(*c.value); });
  return state;
}

/// Records of `state` (kept alive by the caller until the file is written).
template <class Net>
void add_state_records(Net& net, HostState& state, std::vector<TensorRecord>& records) {
  std::size_t offset = 0, counter = 0;
  net.for_each_state([&](const StateView& v) {
    records.push_back(tensor_record(v.name, v.shape, std::span<const float>(state.values).subspan(offset, v.value.size())));
    offset += v.value.size();
  });
  net.for_each_counter([&](const CounterView& c) {
    records.push_back(tensor_record(c.name, {}, std::span<const std::int64_t>(state.counters).subspan(counter++, 1)));
  });
}

/// Loader bindings of the state's F32 tensors into `state.values` (sized here).
template <class Net>
std::vector<ParamMutRef> state_refs(Net& net, HostState& state) {
  state.values.assign(static_cast<std::size_t>(Net::num_state), 0.0f);
  std::vector<ParamMutRef> refs;
  std::size_t offset = 0;
  net.for_each_state([&](const StateView& v) {
    refs.push_back({v.name, v.shape, std::span<float>(state.values).subspan(offset, v.value.size())});
    offset += v.value.size();
  });
  return refs;
}

/// After load_parameters filled the state's F32 tensors: refuses a NaN, an infinity or a negative
/// variance, and reads the counters (I64 scalars, non-negative), naming the tensor.
template <class Net>
void finish_state(const SafetensorsFile& file, Net& net, std::span<const ParamMutRef> refs, HostState& state) {
  for (const ParamMutRef& ref : refs) {
    require_finite(file.path(), ref.name, ref.data, "state");
    if (ref.name.ends_with("running_var"))
      if (const auto negative = std::ranges::find_if(ref.data, [](float v) { return v < 0; });
          negative != ref.data.end())
        throw CheckpointError("checkpoint " + quoted(file.path()) + ": state tensor '" + ref.name +
                              "' holds the negative variance " + describe_value(*negative) + " at element " +
                              std::to_string(negative - ref.data.begin()) + "; the file is damaged");
  }
  state.counters.clear();
  net.for_each_counter([&](const CounterView& c) {
    std::int64_t value = 0;
    file.read<std::int64_t>(c.name, std::span<std::int64_t>(&value, 1), std::span<const std::int64_t>{});
    if (value < 0)
      throw CheckpointError("checkpoint " + quoted(file.path()) + ": counter '" + c.name + "' is " +
                            std::to_string(value) + ", below 0; the file is damaged");
    state.counters.push_back(value);
  });
}

template <class Net>
void commit_state(Net& net, const HostState& state) {
  std::size_t offset = 0, counter = 0;
  net.for_each_state([&](const StateView& v) {
    Net::backend::copy_from_host(state.values.data() + offset, v.value.data(), v.value.size(), net.context());
    offset += v.value.size();
  });
  net.for_each_counter([&](const CounterView& c) { *c.value = state.counters[counter++]; });
}

/// A weights file must hold nothing but the network's tensors: lists the others.
template <class Net>
void require_no_unexpected(const SafetensorsFile& file, Net& net) {
  std::set<std::string> expected;
  net.for_each_parameter([&](const ParameterView& p) { expected.insert(p.name); });
  net.for_each_state([&](const StateView& v) { expected.insert(v.name); });
  net.for_each_counter([&](const CounterView& c) { expected.insert(c.name); });
  std::string unexpected;
  int count = 0;
  for (const std::string& name : file.names())
    if (!expected.contains(name) && ++count <= 32) unexpected += (count > 1 ? ", '" : "'") + name + "'";
  if (count > 32) unexpected += ", ... (" + std::to_string(count - 32) + " more)";
  if (count > 0)
    throw CheckpointError("checkpoint " + quoted(file.path()) +
                          " does not match the parameters being loaded: unexpected tensors: " + unexpected);
}

}  // namespace detail

/// requires: nothing. ensures: returns when `path` (and, with check_temp, "<path>.tmp") is absent
/// or a regular file; otherwise throws CheckpointError naming what is there. Saves call it first:
/// the atomic rename would replace a device node, a FIFO or a symbolic link with a regular file,
/// and a directory cannot be replaced; opening a FIFO at the temporary path would block, and a
/// symbolic link there would have the save truncate its target.
inline void require_replaceable(const std::filesystem::path& path, bool check_temp = true) {
  if (check_temp) require_replaceable(std::filesystem::path(path.string() + ".tmp"), false);
  struct stat status {};
  if (::lstat(path.c_str(), &status) != 0) {
    if (errno == ENOENT) return;  // nothing there yet
    throw CheckpointError("cannot save checkpoint " + detail::quoted(path) + ": " +
                          std::system_category().message(errno));
  }
  if (S_ISREG(status.st_mode)) return;
  const char* kind = S_ISDIR(status.st_mode)    ? "a directory"
                     : S_ISLNK(status.st_mode)  ? "a symbolic link"
                     : S_ISFIFO(status.st_mode) ? "a FIFO"
                     : S_ISCHR(status.st_mode)  ? "a character device"
                     : S_ISBLK(status.st_mode)  ? "a block device"
                     : S_ISSOCK(status.st_mode) ? "a socket"
                                                : "not a regular file";
  throw CheckpointError("refusing to save checkpoint " + detail::quoted(path) + ": it is " + kind +
                        ", and saving replaces the file at that path; give the path of a regular file");
}

/// Saves the network's parameters under their state_dict names, with the architecture in
/// __metadata__ (plus `metadata`). ensures: the previous file at `path` survives any failure.
template <class Net>
void save_weights(const std::filesystem::path& path, Net& net, std::map<std::string, std::string> metadata = {}) {
  require_replaceable(path);
  metadata[kArchitectureKey] = Net::architecture();
  metadata[kFormatKey] = "weights-1";
  std::vector<float> weights = detail::host_parameters(net);
  detail::HostState state = detail::host_state(net);
  std::vector<TensorRecord> records;
  detail::for_each_slice(net, "", weights, [&](std::string name, std::vector<std::int64_t> shape, std::span<float> v) {
    records.push_back(tensor_record(std::move(name), std::move(shape), v));
  });
  detail::add_state_records(net, state, records);
  save_safetensors(path, records, metadata);
}

/// Loads parameters saved by save_weights, by PyTorch (tools/safetensors_torch.py) or by
/// save_training_checkpoint (whose extra tensors are ignored here).
/// Throws CheckpointError naming the tensor and expected vs found shapes, any missing or (for a
/// plain weights file) unexpected tensor, a different architecture, or a NaN / infinite weight;
/// loads nothing then.
template <class Net>
std::map<std::string, std::string> load_weights(const std::filesystem::path& path, Net& net) {
  const SafetensorsFile file = load_safetensors(path);
  detail::check_architecture(file, Net::architecture());
  detail::check_shapes_fit(file, net);
  const auto format = file.metadata().find(kFormatKey);
  const bool training = format != file.metadata().end() && format->second == "training-1";
  // Stage first so that a file with NaN weights leaves the network as it was.
  std::vector<float> staged(static_cast<std::size_t>(Net::num_params));
  std::vector<ParamMutRef> refs;
  std::size_t offset = 0;
  net.for_each_parameter([&](const ParameterView& p) {
    refs.push_back({p.name, p.shape, std::span<float>(staged).subspan(offset, p.value.size())});
    offset += p.value.size();
  });
  const std::size_t num_weights = refs.size();
  detail::HostState state;
  for (ParamMutRef& ref : detail::state_refs(net, state)) refs.push_back(std::move(ref));
  // Counters (batch norm's) are I64, which load_parameters does not bind: a network with state
  // checks for unexpected tensors itself.
  constexpr bool has_state = Net::num_state > 0;
  load_parameters(file, refs, LoadPolicy{.allow_extra = training || has_state});
  const std::span<const ParamMutRef> weight_refs(refs.data(), num_weights);
  for (const ParamMutRef& ref : weight_refs) detail::require_finite(path, ref.name, ref.data, "weight");
  detail::finish_state(file, net, std::span<const ParamMutRef>(refs).subspan(num_weights), state);
  if (has_state && !training) detail::require_no_unexpected(file, net);
  net.copy_parameters_from_host(staged);
  detail::commit_state(net, state);
  return file.metadata();
}

/// Saves weights, optimizer state (optimizer.<state>.<parameter name>), the optimizer's step
/// count and the training counters, atomically.
template <class Net, class Optimizer>
void save_training_checkpoint(const std::filesystem::path& path, Net& net, Optimizer& optimizer,
                              const TrainingState& state) {
  if (state.epoch < 0 || state.epoch > kMaxCheckpointEpoch || state.network_step < 0 || optimizer.steps() < 0)
    throw std::invalid_argument("vgg::io::save_training_checkpoint: counters out of range (epoch " +
                                std::to_string(state.epoch) + ", network step " + std::to_string(state.network_step) +
                                ", optimizer step " + std::to_string(optimizer.steps()) + ")");
  require_replaceable(path);
  std::map<std::string, std::string> metadata = state.metadata;
  metadata[kArchitectureKey] = Net::architecture();
  metadata[kFormatKey] = "training-1";
  metadata["vgg.optimizer"] = detail::optimizer_name(optimizer);
  optimizer.reserve(Net::num_params, net.context());
  // Host copies of everything saved (kept alive until the file is written).
  std::vector<std::vector<float>> host;
  host.push_back(detail::host_parameters(net));
  std::vector<TensorRecord> records;
  auto add_records = [&](const std::string& prefix, std::vector<float>& flat) {
    detail::for_each_slice(net, prefix, flat,
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             records.push_back(tensor_record(std::move(name), std::move(shape), slice));
                           });
  };
  const auto states = detail::optimizer_state(optimizer);
  host.reserve(1 + states.size());  // no reallocation: records point into these buffers
  add_records("", host.front());
  detail::HostState net_state = detail::host_state(net);
  detail::add_state_records(net, net_state, records);
  for (auto& [state_name, flat] : states) {
    host.push_back(detail::host_copy(net, flat));
    add_records("optimizer." + state_name + ".", host.back());
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
/// the file's) and returns the training counters. All or nothing: everything is validated first,
/// including the counters (epoch in [0, kMaxCheckpointEpoch], steps >= 0) and the finiteness of
/// every weight and optimizer state (and exp_avg_sq >= 0), each refusal naming the tensor.
template <class Net, class Optimizer>
TrainingState load_training_checkpoint(const std::filesystem::path& path, Net& net, Optimizer& optimizer) {
  const SafetensorsFile file = load_safetensors(path);
  detail::check_architecture(file, Net::architecture());
  detail::check_shapes_fit(file, net);
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
    std::vector<float> all(static_cast<std::size_t>(Net::num_params));
    std::vector<ParamMutRef> refs;
    std::size_t offset = 0;
    net.for_each_parameter([&](const ParameterView& p) {
      refs.push_back({p.name, p.shape, std::span<float>(all).subspan(offset, p.value.size())});
      offset += p.value.size();
    });
    load_parameters(file, refs, LoadPolicy{.allow_extra = true});
    for (const ParamMutRef& ref : refs) detail::require_finite(path, ref.name, ref.data, "weight");
    return all;
  }();
  detail::HostState net_state;
  {
    const std::vector<ParamMutRef> refs = detail::state_refs(net, net_state);
    load_parameters(file, refs, LoadPolicy{.allow_extra = true});
    detail::finish_state(file, net, refs, net_state);
  }
  std::vector<std::vector<float>> staged_state;
  for (auto& [state_name, flat] : detail::optimizer_state(optimizer)) {
    staged_state.emplace_back(flat.size());
    std::vector<ParamMutRef> refs;
    detail::for_each_slice(net, "optimizer." + state_name + ".", std::span<float>(staged_state.back()),
                           [&](std::string name, std::vector<std::int64_t> shape, std::span<float> slice) {
                             refs.push_back({std::move(name), std::move(shape), slice});
                           });
    load_parameters(file, refs, LoadPolicy{.allow_extra = true});
    for (const ParamMutRef& ref : refs) {
      detail::require_finite(path, ref.name, ref.data, "optimizer state");
      // Adam divides by the square root of its second moment: a negative one gives NaN.
      if (state_name == "exp_avg_sq")
        if (const auto negative = std::ranges::find_if(ref.data, [](float v) { return v < 0; });
            negative != ref.data.end())
          throw CheckpointError("checkpoint " + detail::quoted(path) + ": optimizer state tensor '" + ref.name +
                                "' holds the negative second moment " + describe_value(*negative) + " at element " +
                                std::to_string(negative - ref.data.begin()) + "; the file is damaged");
    }
  }
  std::int64_t epoch = 0, network_step = 0, optimizer_step = 0, network_seed = 0;
  const std::span<const std::int64_t> scalar{};
  file.read<std::int64_t>("train.epoch", std::span<std::int64_t>(&epoch, 1), scalar);
  file.read<std::int64_t>("train.network_step", std::span<std::int64_t>(&network_step, 1), scalar);
  file.read<std::int64_t>("optimizer.step", std::span<std::int64_t>(&optimizer_step, 1), scalar);
  file.read<std::int64_t>("train.network_seed", std::span<std::int64_t>(&network_seed, 1), scalar);
  // A damaged counter must not wrap into a loop of two billion epochs or a negative step.
  auto require_range = [&](const char* tensor, std::int64_t value, std::int64_t max) {
    if (value < 0 || value > max)
      throw CheckpointError("checkpoint " + detail::quoted(path) + ": counter '" + tensor + "' is " +
                            std::to_string(value) + ", outside the valid range 0 to " + std::to_string(max) +
                            "; the file is damaged");
  };
  require_range("train.epoch", epoch, kMaxCheckpointEpoch);
  require_range("train.network_step", network_step, std::numeric_limits<std::int64_t>::max());
  require_range("optimizer.step", optimizer_step, std::numeric_limits<std::int64_t>::max());

  // Commit: to the backend's memory.
  net.copy_parameters_from_host(staged_weights);
  detail::commit_state(net, net_state);
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
