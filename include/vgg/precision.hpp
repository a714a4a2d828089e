#pragma once
// The precision of the operands of a network's convolutions and linear layers. fp32 everywhere is
// the default; bf16 is mixed precision: operands rounded to bf16 as the GEMMs pack them, products
// summed in fp32, and everything else (master weights, optimizer state, activations as stored,
// loss and softmax) in fp32. A backend runs bf16 where its hardware has it and says so
// (cpu::Context::precision_in_use), fp32 elsewhere.

namespace vgg {

enum class Precision { fp32, bf16 };

inline const char* to_string(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

}  // namespace vgg
