#pragma once
// Which cuDNN algorithm each convolution direction uses, chosen once per (shape, batch) and cached
// in the context, so that the layers of one shape (VGG's repeated convs) share one choice. The
// first choice comes from cuDNN's heuristics (cudnnGet*_v7); the first pass with real buffers then
// measures the candidates (cudnnFind*Ex) and keeps the fastest, as PyTorch's cudnn.benchmark does.
// Everything here is host logic over cuDNN's result structs: the tests run it without a device.

#include <cudnn.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "vgg/backend.hpp"

namespace vgg::cuda {

/// One direction's algorithm and the workspace it needs.
template <class Algo>
struct AlgorithmChoice {
  Algo algo{};
  std::size_t workspace = 0;   ///< bytes
  bool measured = false;       ///< chosen from timed runs (else from cuDNN's heuristics)
  bool deterministic = false;  ///< the same result on every run
};

/// The three directions of one convolution shape at one batch size.
struct ConvAlgorithms {
  AlgorithmChoice<cudnnConvolutionFwdAlgo_t> forward;
  AlgorithmChoice<cudnnConvolutionBwdDataAlgo_t> backward_data;
  AlgorithmChoice<cudnnConvolutionBwdFilterAlgo_t> backward_filter;
  /// The most any heuristic candidate asked for: the workspace a timed search offers (capped by free memory).
  std::size_t search_workspace = 0;

  /// The workspace the chosen algorithms need.
  std::size_t workspace() const {
    return std::max({forward.workspace, backward_data.workspace, backward_filter.workspace});
  }
};

struct ConvKey {
  ConvShape shape;
  int batch = 0;
  friend bool operator==(const ConvKey&, const ConvKey&) = default;
};

/// Algorithms per (shape, batch). Few entries (a network's distinct conv shapes times its batch
/// sizes: training, the epoch's last, evaluation), looked up once per pass: a vector suffices.
class AlgorithmCache {
 public:
  /// The entry of key, or null.
  ConvAlgorithms* find(const ConvKey& key) {
    for (auto& [k, value] : entries_)
      if (k == key) return value.get();
    return nullptr;
  }
  /// requires: no entry for key (else std::logic_error). ensures: the entry, at an address that
  /// stays valid as long as the cache (plans keep it).
  ConvAlgorithms& insert(const ConvKey& key, const ConvAlgorithms& algorithms) {
    if (find(key))
      throw std::logic_error("vgg::cuda::AlgorithmCache::insert: the shape " + std::to_string(key.shape.cin) + " -> " +
                             std::to_string(key.shape.cout) + " at batch " + std::to_string(key.batch) +
                             " is cached already");
    entries_.emplace_back(key, std::make_unique<ConvAlgorithms>(algorithms));
    return *entries_.back().second;
  }
  std::size_t size() const { return entries_.size(); }

 private:
  std::vector<std::pair<ConvKey, std::unique_ptr<ConvAlgorithms>>> entries_;
};

/// The algorithm to use among cuDNN's results `perf` (a cudnnConvolution*AlgoPerf_t array, in
/// cuDNN's order). Eligible: it ran (status success), FP32 arithmetic (no tensor-op math: TF32
/// would part from the CPU backend's numbers) and a workspace of at most workspace_limit bytes.
/// Measured results are taken by time (stable: cuDNN's order breaks ties); heuristic ones in
/// cuDNN's order. The first deterministic eligible one wins (the same gradients on every run, as
/// the CPU gives), else the first eligible one.
/// throws: std::runtime_error naming `what` when none is eligible.
template <class Perf>
auto choose_algorithm(std::span<const Perf> perf, std::size_t workspace_limit, bool measured, const char* what)
    -> AlgorithmChoice<decltype(Perf{}.algo)> {
  std::vector<const Perf*> eligible;
  for (const Perf& p : perf)
    if (p.status == CUDNN_STATUS_SUCCESS && p.memory <= workspace_limit &&
        (p.mathType == CUDNN_DEFAULT_MATH || p.mathType == CUDNN_FMA_MATH))
      eligible.push_back(&p);
  if (measured)
    std::stable_sort(eligible.begin(), eligible.end(), [](const Perf* a, const Perf* b) { return a->time < b->time; });
  const auto deterministic = std::find_if(eligible.begin(), eligible.end(),
                                          [](const Perf* p) { return p->determinism == CUDNN_DETERMINISTIC; });
  const Perf* best = deterministic != eligible.end() ? *deterministic : eligible.empty() ? nullptr : eligible.front();
  if (!best)
    throw std::runtime_error(std::string("vgg::cuda: cuDNN offers no ") + what + " algorithm for this convolution (" +
                             std::to_string(perf.size()) + " candidates, none ran in FP32 within " +
                             std::to_string(workspace_limit) + " bytes of workspace)");
  return {best->algo, best->memory, measured, best->determinism == CUDNN_DETERMINISTIC};
}

}  // namespace vgg::cuda
