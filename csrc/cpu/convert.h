// Conversions between the gradient dtypes and the accumulation type for the CPU engine.
//
// bfloat16 / float16 <-> float are written as branch-free integer and float arithmetic (IEEE
// round-to-nearest-even; the same bits as c10::BFloat16 / c10::Half, whose float16 formulas
// come from the FP16 library), so the tile loops that call them vectorise with the baseline
// x86-64 instruction set; c10's scalar conversions do not, and made float16 compute-bound.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace csdfd::cpu {

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Accumulation type: double for double gradients, float for the others.
template <class S>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <class S>
using acc_t = typename Acc<S>::type;

inline double to_acc(double x) { return x; }
inline float to_acc(float x) { return x; }
inline float to_acc(c10::BFloat16 b) { return from_bits(static_cast<uint32_t>(b.x) << 16); }

inline float to_acc(c10::Half h) {
  const uint32_t w = static_cast<uint32_t>(h.x) << 16;
  const uint32_t sign = w & 0x80000000u, two_w = w + w;
  const float normal = from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return from_bits(sign | (two_w < (1u << 27) ? bits(subnormal) : bits(normal)));
}

template <class S>
inline S from_acc(acc_t<S> x);

template <>
inline double from_acc<double>(double x) {
  return x;
}

template <>
inline float from_acc<float>(float x) {
  return x;
}

template <>
inline c10::BFloat16 from_acc<c10::BFloat16>(float x) {
  const uint32_t u = bits(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded),
                       c10::BFloat16::from_bits());
}

template <>
inline c10::Half from_acc<c10::Half>(float x) {
  float base = (std::fabs(x) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bits(x), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = bits(base);
  const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
  const uint32_t h = (sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign);
  return c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits());
}

}  // namespace csdfd::cpu
