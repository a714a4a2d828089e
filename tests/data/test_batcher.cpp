// Batcher: deterministic per-epoch shuffles, complete epochs, partial last batch, limit,
// pixel-exact resizing, worker exceptions and shutdown at any point.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "vgg/data/batcher.hpp"

using namespace vgg::data;

namespace {

// n distinct 28x28 images; label = index % 10.
Dataset synthetic_dataset(std::size_t n) {
  Dataset data;
  data.images.count = n;
  data.images.rows = 28;
  data.images.cols = 28;
  data.images.pixels.resize(n * 28 * 28);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t p = 0; p < 28 * 28; ++p)
      data.images.pixels[i * 784 + p] = static_cast<std::uint8_t>((i * 31 + p * 7 + (p / 28) * (i % 5)) % 256);
  data.labels.resize(n);
  for (std::size_t i = 0; i < n; ++i) data.labels[i] = static_cast<std::uint8_t>(i % 10);
  return data;
}

struct EpochRecord {
  std::vector<std::size_t> order;
  std::vector<std::size_t> batch_sizes;
};

EpochRecord run_epoch(Batcher& batcher, std::uint64_t epoch) {
  EpochRecord record;
  batcher.start_epoch(epoch);
  std::size_t expected_number = 0;
  while (auto batch = batcher.next()) {
    CHECK(batch->number == expected_number++);
    record.batch_sizes.push_back(batch->size);
    record.order.insert(record.order.end(), batch->indices.begin(), batch->indices.end());
  }
  return record;
}

std::vector<std::size_t> iota_vector(std::size_t n) {
  std::vector<std::size_t> v(n);
  std::iota(v.begin(), v.end(), std::size_t{0});
  return v;
}

bool is_permutation_of_first(const std::vector<std::size_t>& order, std::size_t n) {
  std::vector<std::size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  return sorted == iota_vector(n);
}

}  // namespace

TEST_CASE("SplitMix64 and the epoch permutation are pinned to fixed values") {
  // The published first output of SplitMix64 seeded with 0.
  vgg::Rng rng(0);
  CHECK(rng.next() == 0xE220A8397B1DCDAFULL);
  // Computed by an independent Python transcription of the documented algorithm; a change here
  // means every recorded training run would see a different order.
  CHECK(epoch_permutation(10, 42, 0) == std::vector<std::size_t>{4, 7, 2, 9, 0, 6, 8, 5, 3, 1});
  CHECK(epoch_permutation(10, 42, 1) == std::vector<std::size_t>{9, 7, 6, 2, 1, 8, 4, 3, 5, 0});
  CHECK(epoch_permutation(12, 0, 0) == std::vector<std::size_t>{4, 1, 6, 8, 0, 5, 2, 3, 11, 9, 10, 7});
  CHECK(epoch_permutation(6, 123456789, 2) == std::vector<std::size_t>{3, 4, 1, 5, 0, 2});
  CHECK(epoch_permutation(2, 1, 0) == std::vector<std::size_t>{1, 0});
  CHECK(epoch_permutation(0, 1, 1).empty());
  CHECK(epoch_permutation(1, 1, 1) == std::vector<std::size_t>{0});
}

TEST_CASE("every index appears exactly once per epoch, with a short last batch") {
  const Dataset data = synthetic_dataset(103);
  Batcher batcher(data, {.batch_size = 10, .output_size = 8, .seed = 5});
  CHECK(batcher.samples_per_epoch() == 103);
  CHECK(batcher.batches_per_epoch() == 11);
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    const EpochRecord record = run_epoch(batcher, epoch);
    CHECK(record.order.size() == 103);
    CHECK(is_permutation_of_first(record.order, 103));
    CHECK(record.order != iota_vector(103));  // it is really shuffled
    REQUIRE(record.batch_sizes.size() == 11);
    CHECK(std::all_of(record.batch_sizes.begin(), record.batch_sizes.end() - 1, [](std::size_t s) { return s == 10; }));
    CHECK(record.batch_sizes.back() == 3);
  }
}

TEST_CASE("the order depends only on seed and epoch") {
  const Dataset data = synthetic_dataset(50);
  Batcher a(data, {.batch_size = 7, .output_size = 4, .seed = 11});
  Batcher b(data, {.batch_size = 13, .output_size = 4, .seed = 11});  // batch size does not matter
  Batcher other_seed(data, {.batch_size = 7, .output_size = 4, .seed = 12});
  const auto a0 = run_epoch(a, 0).order;
  const auto a1 = run_epoch(a, 1).order;
  CHECK(a0 == run_epoch(b, 0).order);
  CHECK(a1 == run_epoch(b, 1).order);
  CHECK(a0 != a1);
  CHECK(a0 != run_epoch(other_seed, 0).order);
  CHECK(a0 == run_epoch(a, 0).order);  // replaying an epoch gives the same order
  CHECK(a0 == epoch_permutation(50, 11, 0));
}

TEST_CASE("no-shuffle mode delivers the dataset in order") {
  const Dataset data = synthetic_dataset(23);
  Batcher batcher(data, {.batch_size = 5, .output_size = 4, .shuffle = false});
  CHECK(run_epoch(batcher, 0).order == iota_vector(23));
  CHECK(run_epoch(batcher, 7).order == iota_vector(23));
}

TEST_CASE("limit uses only the first N images") {
  const Dataset data = synthetic_dataset(60);
  Batcher batcher(data, {.batch_size = 10, .output_size = 4, .seed = 3, .limit = 25});
  CHECK(batcher.samples_per_epoch() == 25);
  CHECK(batcher.batches_per_epoch() == 3);
  const EpochRecord record = run_epoch(batcher, 0);
  CHECK(is_permutation_of_first(record.order, 25));
  CHECK(record.batch_sizes == std::vector<std::size_t>{10, 10, 5});

  Batcher over_limit(data, {.batch_size = 100, .output_size = 4, .limit = 1000});
  CHECK(over_limit.samples_per_epoch() == 60);
  CHECK(run_epoch(over_limit, 0).batch_sizes == std::vector<std::size_t>{60});
}

TEST_CASE("parts of each batch (data-parallel ranks) split it contiguously and cover it exactly") {
  const Dataset data = synthetic_dataset(103);
  Batcher whole(data, {.batch_size = 10, .output_size = 4, .seed = 5});
  for (const std::size_t parts : {std::size_t{1}, std::size_t{3}, std::size_t{4}}) {
    std::vector<std::vector<std::size_t>> batches;  // per batch, the concatenated parts
    for (std::size_t part = 0; part < parts; ++part) {
      Batcher batcher(data, {.batch_size = 10, .output_size = 4, .seed = 5, .part = part, .parts = parts});
      CHECK(batcher.batches_per_epoch() == 11);  // the global batches' count
      batcher.start_epoch(2);
      std::size_t number = 0;
      while (auto b = batcher.next()) {
        // 10 = 4+3+3 over 3 parts; the last batch of 3 = 1+1+1, or 1+1+1+0 over 4 parts.
        const std::size_t global = number == 10 ? 3 : 10;
        CHECK(b->size == global / parts + (part < global % parts ? 1 : 0));
        CHECK(b->images.size() == b->size * 16);
        if (batches.size() <= number) batches.resize(number + 1);
        batches[number].insert(batches[number].end(), b->indices.begin(), b->indices.end());
        ++number;
      }
      CHECK(number == 11);
    }
    whole.start_epoch(2);
    std::size_t number = 0;
    while (auto b = whole.next()) {
      REQUIRE(number < batches.size());
      CHECK(batches[number++] == std::vector<std::size_t>(b->indices.begin(), b->indices.end()));
    }
  }
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 10, .part = 2, .parts = 2}), std::invalid_argument);
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 10, .parts = 0}), std::invalid_argument);
}

TEST_CASE("batch contents equal the resize of the source images, NCHW, with their labels") {
  const Dataset data = synthetic_dataset(17);
  const int S = 32;
  const Resizer resize(28, S);
  std::vector<float> expected(resize.out_pixels());
  Batcher batcher(data, {.batch_size = 4, .output_size = S, .seed = 9});
  batcher.start_epoch(2);
  std::size_t seen = 0;
  while (auto batch = batcher.next()) {
    CHECK(batch->image_size == S);
    REQUIRE(batch->images.size() == batch->size * std::size_t(S * S));
    REQUIRE(batch->labels.size() == batch->size);
    for (std::size_t k = 0; k < batch->size; ++k) {
      const std::size_t index = batch->indices[k];
      CHECK(batch->labels[k] == std::int32_t(data.labels[index]));
      resize(data.images.image(index), expected);
      CHECK(std::equal(expected.begin(), expected.end(), batch->images.begin() + std::ptrdiff_t(k * resize.out_pixels())));
    }
    seen += batch->size;
  }
  CHECK(seen == 17);
}

TEST_CASE("next() without an active epoch, and after its end, returns nothing") {
  const Dataset data = synthetic_dataset(5);
  Batcher batcher(data, {.batch_size = 2, .output_size = 4});
  CHECK_FALSE(batcher.next().has_value());
  batcher.start_epoch(0);
  int batches = 0;
  while (batcher.next()) ++batches;
  CHECK(batches == 3);
  CHECK_FALSE(batcher.next().has_value());
  CHECK_FALSE(batcher.next().has_value());
}

TEST_CASE("restarting mid-epoch drops the rest and delivers the new epoch completely") {
  const Dataset data = synthetic_dataset(40);
  Batcher batcher(data, {.batch_size = 6, .output_size = 8, .seed = 1});
  batcher.start_epoch(0);
  REQUIRE(batcher.next().has_value());
  REQUIRE(batcher.next().has_value());
  const EpochRecord record = run_epoch(batcher, 1);
  CHECK(record.order == epoch_permutation(40, 1, 1));
  CHECK(record.batch_sizes.size() == 7);
}

TEST_CASE("the transform hook runs on every sample and its exceptions reach the caller") {
  const Dataset data = synthetic_dataset(30);
  std::atomic<bool> fail{false};
  std::atomic<int> calls{0};
  Batcher batcher(data, {.batch_size = 4,
                         .output_size = 4,
                         .seed = 2,
                         .transform = [&](std::span<float> image, std::size_t index) {
                           ++calls;
                           if (fail && index == 13) throw std::runtime_error("transform failed on 13");
                           for (float& v : image) v = -v;
                         }});
  batcher.start_epoch(0);
  while (auto batch = batcher.next())
    for (float v : batch->images) CHECK(v <= 0.0f);
  CHECK(calls == 30);

  fail = true;
  batcher.start_epoch(1);
  CHECK_THROWS_WITH_AS(
      [&] {
        while (batcher.next()) {
        }
      }(),
      "transform failed on 13", std::runtime_error);
  CHECK_FALSE(batcher.next().has_value());  // the failed epoch is over

  fail = false;  // the Batcher stays usable
  CHECK(is_permutation_of_first(run_epoch(batcher, 2).order, 30));
}

TEST_CASE("destruction at any point finishes without deadlock") {
  const Dataset data = synthetic_dataset(64);
  const BatcherOptions options{.batch_size = 8, .output_size = 64, .seed = 4};
  { Batcher never_started(data, options); }
  {
    Batcher started(data, options);
    started.start_epoch(0);
  }
  {
    Batcher mid_epoch(data, options);
    mid_epoch.start_epoch(0);
    REQUIRE(mid_epoch.next().has_value());
  }
  {
    Batcher holding_last(data, options);
    holding_last.start_epoch(0);
    for (int i = 0; i < 8; ++i) REQUIRE(holding_last.next().has_value());
  }
  CHECK(true);  // reaching here is the assertion; the CTest TIMEOUT catches a hang
}

TEST_CASE("invalid options and datasets are rejected") {
  const Dataset data = synthetic_dataset(3);
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 2, .output_size = 0}), std::invalid_argument);
  Dataset inconsistent = synthetic_dataset(3);
  inconsistent.labels.pop_back();
  CHECK_THROWS_AS(Batcher(inconsistent, {}), std::invalid_argument);
  const Dataset empty = synthetic_dataset(0);
  CHECK_THROWS_AS(Batcher(empty, {}), std::invalid_argument);
}

TEST_CASE("channels: the grey image is copied into each channel and normalised per channel") {
  const Dataset data = synthetic_dataset(9);
  constexpr std::size_t pixels = 6 * 6;
  Batcher grey(data, {.batch_size = 4, .output_size = 6, .shuffle = false});
  Batcher rgb(data, {.batch_size = 4, .output_size = 6, .shuffle = false, .channels = 3, .normalize = true,
                     .mean = kImageNetMean, .std_dev = kImageNetStd});
  Batcher copied(data, {.batch_size = 4, .output_size = 6, .shuffle = false, .channels = 3});
  grey.start_epoch(0);
  rgb.start_epoch(0);
  copied.start_epoch(0);
  std::size_t samples = 0;
  while (auto g = grey.next()) {
    const auto c = rgb.next();
    const auto p = copied.next();
    REQUIRE(c.has_value());
    REQUIRE(p.has_value());
    REQUIRE(c->size == g->size);
    REQUIRE(c->images.size() == 3 * g->images.size());
    for (std::size_t k = 0; k < g->size; ++k)
      for (std::size_t ch = 0; ch < 3; ++ch)
        for (std::size_t i = 0; i < pixels; ++i) {
          const float x = g->images[k * pixels + i];
          const std::size_t at = (k * 3 + ch) * pixels + i;
          CHECK(p->images[at] == x);
          CHECK(c->images[at] == doctest::Approx((x - kImageNetMean[ch]) / kImageNetStd[ch]).epsilon(1e-6));
        }
    samples += g->size;
  }
  CHECK(samples == 9);
  CHECK_FALSE(rgb.next().has_value());
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 4, .output_size = 6, .channels = 4}), std::invalid_argument);
  CHECK_THROWS_AS(Batcher(data, {.batch_size = 4, .output_size = 6, .channels = 3, .normalize = true,
                                 .std_dev = {1.0f, 0.0f, 1.0f}}),
                  std::invalid_argument);
}
