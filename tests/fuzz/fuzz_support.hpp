// Shared by the fuzz targets: an invariant check that stops the run with a message, which
// libFuzzer then reports as a crash with the input that broke it.
#pragma once

#include <cstdio>
#include <cstdlib>

#define VGG_FUZZ_CHECK(condition)                                                                  \
  do {                                                                                             \
    if (!(condition)) {                                                                            \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                                \
    }                                                                                              \
  } while (false)
