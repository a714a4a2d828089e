#pragma once
// Batches staged ahead of their forward pass (Network::stage, then Network::forward(StagedBatch)).
//
// A device backend uploads batch k+1 while step k computes: two staging slots used in turn, each
// a host buffer (pinned on a GPU) and a buffer in the backend's memory; the upload runs on the
// backend's copy queue, and the compute waits for it only when the forward pass of that batch
// starts. BatchStaging holds the backend-independent part (which slot, when a slot may be
// refilled, sizes, stale handles); a Transport does the backend's part. Backends whose memory is
// host memory use HostViewTransport: nothing is copied, the staged batch is a view of the caller's.
//
// Ordering, for a slot s (the transport's primitives in brackets):
//   stage into s:  if a forward pass used s since it was last released, release it after all the
//                  work queued so far [release_after_queued(s)]; wait until s's previous upload has
//                  read its host buffer [wait_host_free(s)]; grow s [reserve]; copy the batch into
//                  s's host buffer; upload it once the compute has released s [upload(s)].
//   forward of s:  the compute waits for s's upload [compute_waits_for(s)]; the other slot is
//                  released after all the work queued before this pass [release_after_queued].
// In a training loop (stage k+1 after step k is queued) slot s is released when step k starts,
// which is after step k-1 (its last user) in queue order: the upload of k+1 overlaps step k.

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

namespace vgg {

/// Staging slots: the batch in use and the one on its way.
inline constexpr int staging_slots = 2;

/// A batch handed to a backend ahead of its forward pass. Copyable; a handle, not an owner.
struct StagedBatch {
  int size = 0;                          ///< samples
  std::span<const float> host_images;    ///< the samples on the host (health checks read them)
  std::span<const std::int32_t> labels;  ///< on the host
  const float* images = nullptr;         ///< in the backend's memory, complete once its forward pass starts
  int slot = -1;                         ///< the staging slot holding it
  std::uint64_t ticket = 0;              ///< which staging of that slot (0: none; a later staging invalidates it)
};

/// The slot logic of batch staging over a Transport (see the file comment for its primitives).
template <class Transport>
class BatchStaging {
 public:
  using Context = typename Transport::Context;
  static constexpr int slots = staging_slots;

  /// requires: labels.size() >= 1 and images.size() == labels.size() * sample_floats (else
  ///           std::invalid_argument). With a transport that copies, images and labels may be
  ///           reused as soon as this returns; with a view (host-memory backends) they must stay
  ///           unchanged until the step that uses them is done.
  /// ensures: the batch is in the next slot (or on its way there); a StagedBatch staged two calls
  ///          ago (same slot) is invalid from now on.
  StagedBatch stage(Context& ctx, std::span<const float> images, std::span<const std::int32_t> labels,
                    std::size_t sample_floats) {
    const std::size_t n = labels.size();
    if (n == 0 || n > std::size_t(INT_MAX))
      throw std::invalid_argument("vgg::Network::stage: a batch needs 1 to " + std::to_string(INT_MAX) +
                                  " samples, found " + std::to_string(n) + " labels");
    if (images.size() != n * sample_floats)
      throw std::invalid_argument("vgg::Network::stage: " + std::to_string(n) + " samples of " +
                                  std::to_string(sample_floats) + " floats need " + std::to_string(n * sample_floats) +
                                  " floats, found " + std::to_string(images.size()));
    const int slot = next_slot_;
    StagedBatch b;
    b.size = int(n);
    b.slot = slot;
    tickets_[slot] = 0;  // invalid while refilled: a failure below leaves no usable handle to it
    if constexpr (Transport::copies) {
      if (in_use_[slot]) {
        // A forward pass read this slot and no later pass released it: wait for all queued work.
        transport_.release_after_queued(ctx, slot);
        in_use_[slot] = false;
      }
      transport_.wait_host_free(ctx, slot);
      transport_.reserve(ctx, slot, images.size(), n);
      float* host_images = transport_.host_images(slot);
      std::int32_t* host_labels = transport_.host_labels(slot);
      std::copy(images.begin(), images.end(), host_images);
      std::copy(labels.begin(), labels.end(), host_labels);
      transport_.upload(ctx, slot, images.size());
      b.host_images = {host_images, images.size()};
      b.labels = {host_labels, n};
      b.images = transport_.device_images(slot);
    } else {
      b.host_images = images;
      b.labels = labels;
      b.images = images.data();
    }
    next_slot_ = (slot + 1) % slots;
    b.ticket = tickets_[slot] = ++issued_;
    return b;
  }

  /// For the forward pass of b: its images in the backend's memory, ready for work queued after this call.
  /// requires: b came from this stager's stage() and its slot was not staged again since (else
  ///           std::logic_error: at most one batch may be staged ahead of the one in use).
  const float* acquire(Context& ctx, const StagedBatch& b) {
    if (!current(b))
      throw std::logic_error(
          b.ticket == 0 ? std::string("vgg::Network::forward: this StagedBatch was not made by Network::stage")
                        : "vgg::Network::forward: the staged batch (ticket " + std::to_string(b.ticket) +
                              ") was overwritten by a later stage(): stage at most one batch ahead of the one in use");
    if constexpr (Transport::copies) {
      transport_.compute_waits_for(ctx, b.slot);
      const int other = (b.slot + 1) % slots;
      if (in_use_[other]) {
        transport_.release_after_queued(ctx, other);  // everything before this pass is done with it
        in_use_[other] = false;
      }
      in_use_[b.slot] = true;
    }
    return b.images;
  }

  /// The slot the next stage() fills (whose batch it invalidates, even if that stage() fails).
  int next_slot() const { return next_slot_; }

  /// Whether b is still the batch its slot holds.
  bool current(const StagedBatch& b) const {
    return b.slot >= 0 && b.slot < slots && b.ticket != 0 && tickets_[std::size_t(b.slot)] == b.ticket;
  }

  Transport& transport() { return transport_; }

 private:
  Transport transport_;
  std::array<std::uint64_t, slots> tickets_{};
  std::array<bool, slots> in_use_{};
  std::uint64_t issued_ = 0;
  int next_slot_ = 0;
};

/// The transport of backends whose memory is host memory: the staged batch is the caller's.
template <class Ctx>
struct HostViewTransport {
  using Context = Ctx;
  static constexpr bool copies = false;
};

}  // namespace vgg
