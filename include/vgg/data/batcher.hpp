#pragma once
// Shuffled mini-batches, resized on the fly by a background thread.
//
// Resizing happens per batch because the resized set does not fit in memory (60,000 x 224 x 224
// floats are 12 GB). A worker thread fills the next batch while the caller computes on the current
// one: two pre-allocated buffers, handed back and forth, so steady state allocates nothing.
//
// Order: per epoch, a Fisher-Yates shuffle of 0..n-1 driven by SplitMix64 (self-written, so the
// order is the same with every standard library; std::shuffle and std::uniform_int_distribution
// are not portable). The generator (vgg::Rng, random.hpp) starts at
// splitmix64_finalize(seed ^ splitmix64_finalize(epoch)).

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <cmath>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "vgg/data/idx.hpp"
#include "vgg/data/resize.hpp"
#include "vgg/random.hpp"

namespace vgg::data {

/// requires: nothing.  ensures: the permutation of 0..n-1 used for (seed, epoch): Fisher-Yates from
/// the top, swapping i with below(i + 1) for i = n-1 .. 1; identical on every platform.
inline std::vector<std::size_t> epoch_permutation(std::size_t n, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  vgg::Rng rng(vgg::splitmix64_finalize(seed ^ vgg::splitmix64_finalize(epoch)));
  for (std::size_t i = n; i-- > 1;) std::swap(order[i], order[rng.below(i + 1)]);
  return order;
}

struct BatcherOptions {
  std::size_t batch_size = 32;
  int output_size = 32;      // S: images come out S x S
  std::uint64_t seed = 0;
  bool shuffle = true;       // false: dataset order, for evaluation
  std::size_t limit = 0;     // use only the first `limit` images of the dataset; 0 means all
  // Optional per-sample hook run on the worker thread after resizing (e.g. normalisation);
  // arguments: the S*S floats of the sample and its dataset index. Exceptions reach the caller.
  std::function<void(std::span<float>, std::size_t)> transform = {};
  // Data-parallel training: deliver only part `part` of `parts` of every batch, so that each rank
  // resizes just the samples it trains on. Parts are contiguous and differ in size by at most one,
  // the first (size % parts) one larger: vgg::distributed::shard_range's split. The order and the
  // batch boundaries stay those of the whole batches (batch_size is the global batch).
  std::size_t part = 0, parts = 1;
  // Channels of every output image: the grey image is copied into each (torchvision's pretrained
  // nets take 3), after `transform`. 1 to kMaxChannels.
  int channels = 1;
  // Per-channel normalisation after the copy, x -> (x - mean[c]) / std_dev[c] (ImageNet's for a
  // pretrained torchvision net: kImageNetMean, kImageNetStd). Off when `normalize` is false.
  bool normalize = false;
  std::array<float, 3> mean{0.0f, 0.0f, 0.0f};
  std::array<float, 3> std_dev{1.0f, 1.0f, 1.0f};
};

inline constexpr int kMaxChannels = 3;
/// torchvision's ImageNet normalisation (what its pretrained VGG weights were trained with).
inline constexpr std::array<float, 3> kImageNetMean{0.485f, 0.456f, 0.406f};
inline constexpr std::array<float, 3> kImageNetStd{0.229f, 0.224f, 0.225f};

/// One mini-batch, valid until the next call to Batcher::next() / start_epoch() or destruction.
struct Batch {
  std::size_t number = 0;                 // position of this batch within the epoch
  std::size_t size = 0;                   // samples in it (in this part); the last batch of an epoch may be short
  int image_size = 0;                     // S
  std::span<float> images;                // NCHW [size, channels, S, S]
  std::span<const std::int32_t> labels;   // [size]
  std::span<const std::size_t> indices;   // [size] positions in the Dataset, for debugging/tests
};

/// Delivers the samples of a Dataset as resized, shuffled mini-batches, prepared one batch ahead
/// by a background thread. Use:
///   Batcher batches(train, {.batch_size = 64, .output_size = 32, .seed = 1});
///   for (epoch...) { batches.start_epoch(epoch); while (auto b = batches.next()) use(*b); }
/// Not thread-safe: one caller thread drives it.
class Batcher {
 public:
  /// requires: `data` outlives the Batcher and is not modified meanwhile; batch_size > 0;
  /// output_size > 0; part < parts; 1 <= channels <= kMaxChannels; with normalize, every std_dev
  /// of the first `channels` positive and finite and every mean finite; data.images.count ==
  /// data.size() > 0 (std::invalid_argument otherwise).
  /// ensures: no epoch is active (next() returns nothing until start_epoch); buffers for two
  /// batches of batch_size x channels x S x S floats are allocated; the worker thread is running.
  Batcher(const Dataset& data, BatcherOptions options)
      : data_(data),
        options_(std::move(options)),
        resizer_(data.images.rows, data.images.cols, options_.output_size, options_.output_size) {
    if (options_.batch_size == 0) throw std::invalid_argument("Batcher: batch_size must be > 0");
    if (options_.part >= options_.parts)
      throw std::invalid_argument("Batcher: part " + std::to_string(options_.part) + " of " +
                                  std::to_string(options_.parts) + " parts does not exist");
    if (data.images.count != data.labels.size() ||
        data.images.pixels.size() != data.images.count * data.images.pixels_per_image())
      throw std::invalid_argument("Batcher: dataset images and labels disagree in count");
    if (data.size() == 0) throw std::invalid_argument("Batcher: dataset is empty");
    if (options_.channels < 1 || options_.channels > kMaxChannels)
      throw std::invalid_argument("Batcher: channels must be 1 to " + std::to_string(kMaxChannels) + ", found " +
                                  std::to_string(options_.channels));
    for (std::size_t c = 0; options_.normalize && c < std::size_t(options_.channels); ++c)
      if (!(std::isfinite(options_.mean[c]) && std::isfinite(options_.std_dev[c]) && options_.std_dev[c] > 0.0f))
        throw std::invalid_argument("Batcher: channel " + std::to_string(c) + " normalisation needs a finite mean "
                                    "and a positive, finite std_dev, found mean " + std::to_string(options_.mean[c]) +
                                    " and std_dev " + std::to_string(options_.std_dev[c]));
    samples_ = options_.limit == 0 ? data.size() : std::min(options_.limit, data.size());
    order_.reserve(samples_);
    const std::size_t largest_part = (options_.batch_size + options_.parts - 1) / options_.parts;
    for (Slot& slot : slots_) {
      slot.images.resize(largest_part * image_values());
      slot.labels.resize(largest_part);
      slot.indices.resize(largest_part);
    }
    worker_ = std::thread([this] { work(); });
  }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  /// ensures: the worker is stopped (abandoning any batch it was preparing) and joined.
  ~Batcher() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      abandon_.store(true, std::memory_order_relaxed);
    }
    changed_.notify_all();
    worker_.join();
  }

  /// ensures: samples used per epoch (the dataset size, or `limit` if smaller).
  std::size_t samples_per_epoch() const { return samples_; }
  /// ensures: ceil(samples_per_epoch() / batch_size).
  std::size_t batches_per_epoch() const { return (samples_ + options_.batch_size - 1) / options_.batch_size; }
  const BatcherOptions& options() const { return options_; }

  /// requires: nothing (may be called mid-epoch; the rest of that epoch is dropped).
  /// ensures: the order for `epoch` is fixed (shuffled by (seed, epoch), or dataset order when
  /// shuffle is false) and the worker starts preparing its first batches; a Batch obtained before
  /// is invalid. Rethrows a pending exception from the worker.
  void start_epoch(std::uint64_t epoch) {
    std::unique_lock lock(mutex_);
    // The worker reads order_ and the slot buffers without the lock while filling; wait it out.
    changed_.wait(lock, [&] { return !filling_; });
    rethrow_worker_error(lock);
    if (options_.shuffle) {
      order_ = epoch_permutation(samples_, options_.seed, epoch);
    } else {
      order_.resize(samples_);
      std::iota(order_.begin(), order_.end(), std::size_t{0});
    }
    for (Slot& slot : slots_) slot.state = SlotState::free;
    held_slot_.reset();
    next_to_fill_ = 0;
    next_to_deliver_ = 0;
    epoch_active_ = true;
    lock.unlock();
    changed_.notify_all();
  }

  /// requires: nothing.
  /// ensures: the next batch of the current epoch, or std::nullopt when the epoch is exhausted or
  /// none was started. The previous Batch becomes invalid (its buffer goes back to the worker).
  /// Rethrows an exception thrown on the worker thread (the epoch is then over).
  std::optional<Batch> next() {
    std::unique_lock lock(mutex_);
    if (held_slot_) {
      slots_[*held_slot_].state = SlotState::free;
      held_slot_.reset();
      changed_.notify_all();
    }
    rethrow_worker_error(lock);
    if (!epoch_active_ || next_to_deliver_ >= batches_per_epoch()) return std::nullopt;
    const std::size_t slot_index = next_to_deliver_ % 2;
    Slot& slot = slots_[slot_index];
    changed_.wait(lock, [&] { return slot.state == SlotState::ready || error_; });
    rethrow_worker_error(lock);
    slot.state = SlotState::held;
    held_slot_ = slot_index;
    ++next_to_deliver_;
    const std::size_t values = slot.size * image_values();
    return Batch{slot.number,
                 slot.size,
                 options_.output_size,
                 std::span<float>(slot.images.data(), values),
                 std::span<const std::int32_t>(slot.labels.data(), slot.size),
                 std::span<const std::size_t>(slot.indices.data(), slot.size)};
  }

 private:
  enum class SlotState { free, filling, ready, held };
  struct Slot {
    SlotState state = SlotState::free;
    std::size_t number = 0, size = 0;
    std::vector<float> images;
    std::vector<std::int32_t> labels;
    std::vector<std::size_t> indices;
  };

  /// Floats per output image: channels x S x S.
  std::size_t image_values() const { return std::size_t(options_.channels) * resizer_.out_pixels(); }

  /// The first plane of `image` (resized, transformed) copied into every channel and normalised
  /// in place: the planes after the first are written from it before it is changed itself.
  void expand_channels(std::span<float> image) const {
    const std::size_t pixels = resizer_.out_pixels();
    const float* grey = image.data();
    for (int c = options_.channels - 1; c >= 0; --c) {
      float* plane = image.data() + std::size_t(c) * pixels;
      if (!options_.normalize) {
        if (c > 0) std::copy_n(grey, pixels, plane);
        continue;
      }
      // Multiplying by the reciprocal differs from torchvision's division by an ulp at most.
      const float mean = options_.mean[std::size_t(c)], scale = 1.0f / options_.std_dev[std::size_t(c)];
      for (std::size_t p = 0; p < pixels; ++p) plane[p] = (grey[p] - mean) * scale;
    }
  }

  void rethrow_worker_error(std::unique_lock<std::mutex>&) {
    if (!error_) return;
    std::exception_ptr error = std::exchange(error_, nullptr);
    epoch_active_ = false;
    std::rethrow_exception(error);
  }

  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] {
        return stopping_ || (epoch_active_ && !error_ && next_to_fill_ < batches_per_epoch() &&
                             slots_[next_to_fill_ % 2].state == SlotState::free);
      });
      if (stopping_) return;
      const std::size_t number = next_to_fill_++;
      Slot& slot = slots_[number % 2];
      slot.state = SlotState::filling;
      filling_ = true;
      lock.unlock();
      std::exception_ptr error;
      try {
        fill(slot, number);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      filling_ = false;
      slot.state = error ? SlotState::free : SlotState::ready;
      if (error) error_ = error;
      changed_.notify_all();
    }
  }

  // Runs without the lock: start_epoch and next never touch a slot in state `filling` or order_
  // while filling_ is set.
  void fill(Slot& slot, std::size_t number) {
    const std::size_t whole = std::min(options_.batch_size, samples_ - number * options_.batch_size);
    const std::size_t base = whole / options_.parts, extra = whole % options_.parts;
    const std::size_t first = number * options_.batch_size + options_.part * base + std::min(options_.part, extra);
    const std::size_t size = base + (options_.part < extra ? 1 : 0);
    const std::size_t pixels = resizer_.out_pixels(), values = image_values();
    for (std::size_t k = 0; k < size; ++k) {
      if (abandon_.load(std::memory_order_relaxed)) return;  // the destructor does not wait for a full batch
      const std::size_t index = order_[first + k];
      std::span<float> out(slot.images.data() + k * values, pixels);
      resizer_(data_.images.image(index), out);
      if (options_.transform) options_.transform(out, index);
      if (options_.channels > 1 || options_.normalize) expand_channels({slot.images.data() + k * values, values});
      slot.labels[k] = data_.labels[index];
      slot.indices[k] = index;
    }
    slot.number = number;
    slot.size = size;
  }

  const Dataset& data_;
  const BatcherOptions options_;
  const Resizer resizer_;
  std::size_t samples_ = 0;
  std::vector<std::size_t> order_;
  Slot slots_[2];

  std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  std::atomic<bool> abandon_{false};  // stopping_, readable without the lock while filling
  bool epoch_active_ = false;
  bool filling_ = false;
  std::size_t next_to_fill_ = 0;
  std::size_t next_to_deliver_ = 0;
  std::optional<std::size_t> held_slot_;
  std::exception_ptr error_;
  std::thread worker_;  // last: starts after every member above is constructed
};

}  // namespace vgg::data
