// bfloat16 on the host for tests: the bits a device conversion stores, and values rounded the
// ways tests need (nearest even, as __float2bfloat16; or truncated, to make many exact ties).
#pragma once

#include <cstdint>
#include <cstring>

namespace glmserve::testutil {

inline uint16_t ToBf16Bits(float v) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

inline float FromBf16Bits(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline float RoundToBf16(float v) { return FromBf16Bits(ToBf16Bits(v)); }

inline float TruncateToBf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits &= 0xFFFF0000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace glmserve::testutil
