#pragma once
// The CUDA backend's batch staging (the transport of vgg::BatchStaging, staging.hpp): per slot a
// pinned host buffer for the images and labels and a device buffer for the images; uploads run on
// a copy stream of their own, ordered against the compute stream by two events per slot
// (uploaded: the compute waits for it; released: the upload waits for it). So the upload of batch
// k+1 runs while step k computes, and a steady-state step allocates nothing.

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "vgg/cuda/check.hpp"
#include "vgg/cuda/context.hpp"
#include "vgg/cuda/memory.hpp"
#include "vgg/staging.hpp"

namespace vgg::cuda {

class StagingTransport {
 public:
  using Context = cuda::Context;
  static constexpr bool copies = true;
  static constexpr int slots = staging_slots;

  StagingTransport() = default;
  StagingTransport(StagingTransport&&) = default;
  StagingTransport& operator=(StagingTransport&& o) noexcept {
    if (this != &o) {
      finish();
      slots_ = std::move(o.slots_);
      copy_stream_ = std::move(o.copy_stream_);
      uploaded_ = std::move(o.uploaded_);
      released_ = std::move(o.released_);
    }
    return *this;
  }
  ~StagingTransport() { finish(); }

  void wait_host_free(Context&, int slot) {
    start();
    VGG_CUDA_CHECK(cudaEventSynchronize(uploaded_[std::size_t(slot)].get()));
  }
  void reserve(Context&, int slot, std::size_t image_floats, std::size_t labels) {
    Slot& s = slots_[std::size_t(slot)];
    s.host_images.reserve(image_floats);
    s.host_labels.reserve(labels);
    s.device_images.reserve(image_floats);
  }
  float* host_images(int slot) { return slots_[std::size_t(slot)].host_images.data(); }
  std::int32_t* host_labels(int slot) { return slots_[std::size_t(slot)].host_labels.data(); }
  const float* device_images(int slot) { return slots_[std::size_t(slot)].device_images.data(); }

  /// The upload of the slot's host images, on the copy stream, once the compute has released the slot.
  void upload(Context&, int slot, std::size_t image_floats) {
    Slot& s = slots_[std::size_t(slot)];
    VGG_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_.get(), released_[std::size_t(slot)].get(), 0));
    VGG_CUDA_CHECK(cudaMemcpyAsync(s.device_images.data(), s.host_images.data(), image_floats * sizeof(float),
                                   cudaMemcpyHostToDevice, copy_stream_.get()));
    VGG_CUDA_CHECK(cudaEventRecord(uploaded_[std::size_t(slot)].get(), copy_stream_.get()));
  }
  /// Work queued on the compute stream after this waits for the slot's upload.
  void compute_waits_for(Context& ctx, int slot) {
    start();
    VGG_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream(), uploaded_[std::size_t(slot)].get(), 0));
  }
  /// The slot may be refilled once the work queued on the compute stream so far is done.
  void release_after_queued(Context& ctx, int slot) {
    start();
    VGG_CUDA_CHECK(cudaEventRecord(released_[std::size_t(slot)].get(), ctx.stream()));
  }

  /// Whether the slot's last upload is complete (for tests: the upload did not wait for the compute).
  bool upload_done(int slot) const {
    if (!copy_stream_) return true;
    const cudaError_t status = cudaEventQuery(uploaded_[std::size_t(slot)].get());
    if (status == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    VGG_CUDA_CHECK(status);
    return true;
  }
  cudaStream_t copy_stream() const { return copy_stream_.get(); }

 private:
  struct StreamDeleter {
    void operator()(cudaStream_t s) const { (void)cudaStreamDestroy(s); }
  };
  struct EventDeleter {
    void operator()(cudaEvent_t e) const { (void)cudaEventDestroy(e); }
  };
  using Event = std::unique_ptr<CUevent_st, EventDeleter>;
  struct Slot {
    PinnedBuffer<float> host_images;
    PinnedBuffer<std::int32_t> host_labels;
    Buffer<float> device_images;
  };

  /// Pending uploads read the pinned buffers: they finish before those are freed (no error can be
  /// acted on here, in a destructor).
  void finish() noexcept {
    if (copy_stream_) (void)cudaStreamSynchronize(copy_stream_.get());
  }

  /// The copy stream and the events, made the first time a batch is staged (a network that is
  /// never given a staged batch makes none).
  void start() {
    if (copy_stream_) return;
    cudaStream_t stream = nullptr;
    VGG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    copy_stream_.reset(stream);
    for (auto* events : {&uploaded_, &released_})
      for (Event& e : *events) {
        cudaEvent_t event = nullptr;
        VGG_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));  // ordering only: cheaper
        e.reset(event);
      }
  }

  // Slots first: destroyed last, after the stream and events that order their copies.
  std::array<Slot, slots> slots_;
  std::unique_ptr<CUstream_st, StreamDeleter> copy_stream_;
  std::array<Event, slots> uploaded_, released_;
};

}  // namespace vgg::cuda
