#pragma once
// vgg::OutOfMemoryError: a backend's memory ran out. It says what ran out (device memory, pinned
// host memory), the bytes asked for and the bytes free, and, once the network has added it, what
// the buffer was for and the batch size it was reserved for: the batch size is the knob a user turns.

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace vgg {

class OutOfMemoryError : public std::runtime_error {
 public:
  /// origin: who asked ("vgg::cuda"); memory: what ran out ("device memory"); free and total
  /// unknown when the runtime could not tell.
  OutOfMemoryError(std::string origin, std::string memory, std::size_t bytes_asked,
                   std::optional<std::size_t> bytes_free, std::optional<std::size_t> bytes_total,
                   std::string purpose = {}, int batch = 0)
      : std::runtime_error(message(origin, memory, bytes_asked, bytes_free, bytes_total, purpose, batch)),
        origin_(std::move(origin)),
        memory_(std::move(memory)),
        purpose_(std::move(purpose)),
        bytes_asked_(bytes_asked),
        bytes_free_(bytes_free),
        bytes_total_(bytes_total),
        batch_(batch) {}

  std::size_t bytes_asked() const { return bytes_asked_; }
  std::optional<std::size_t> bytes_free() const { return bytes_free_; }
  /// What the allocation was for (empty until someone who knows says).
  const std::string& purpose() const { return purpose_; }
  /// The batch size the buffer was reserved for; 0 when not batch-dependent or not yet known.
  int batch() const { return batch_; }

  /// The same error, told what the allocation was for and for which batch size.
  OutOfMemoryError for_batch(std::string purpose, int batch) const {
    return {origin_, memory_, bytes_asked_, bytes_free_, bytes_total_, std::move(purpose), batch};
  }

 private:
  static std::string message(const std::string& origin, const std::string& memory, std::size_t asked,
                             std::optional<std::size_t> free, std::optional<std::size_t> total,
                             const std::string& purpose, int batch) {
    std::string m = origin + ": out of " + memory + ": asked for " + std::to_string(asked) + " bytes, ";
    m += free ? std::to_string(*free) + " bytes free" : std::string("free bytes unknown");
    if (free && total) m += " of " + std::to_string(*total);
    if (!purpose.empty()) m += ", for " + purpose;
    if (batch > 0) m += ", for a batch of " + std::to_string(batch) + " (a smaller batch size needs less)";
    return m;
  }

  std::string origin_, memory_, purpose_;
  std::size_t bytes_asked_;
  std::optional<std::size_t> bytes_free_, bytes_total_;
  int batch_;
};

/// f(), with an out-of-memory error that does not know its batch yet told `purpose()` and `batch`
/// (purpose is a callable: the text is built only on failure).
template <class Purpose, class F>
void for_batch(int batch, Purpose&& purpose, F&& f) {
  try {
    f();
  } catch (const OutOfMemoryError& e) {
    if (e.batch() > 0) throw;  // a deeper layer already said
    throw e.for_batch(purpose(), batch);
  }
}

}  // namespace vgg
