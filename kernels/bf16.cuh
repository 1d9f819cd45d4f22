// bf16.cuh — bfloat16 storage for the kernels, as raw bits (no cuda_bf16.h dependency).
//
// bf16_t is the 16 high bits of an IEEE binary32. Conversions match the `half` crate
// (half::bf16::from_f32 / to_f32) bit for bit, so a CPU twin that rounds with `half` sees the
// same values:
//   * f32 -> bf16: round to nearest, ties to even; overflow rounds to ±inf; subnormals are
//     rounded like any other value (no flush to zero); a NaN keeps its sign and top payload bits
//     and gets the quiet bit (0x0040) set, exactly as half does.
//   * bf16 -> f32: exact (a 16-bit shift); a NaN keeps its sign and payload and gets the quiet
//     bit, exactly as half does.
// Kernel arguments of bf16 tensors are `bf16_t*`; on the Rust side they are `half::bf16` buffers
// (same size and bit layout).
#pragma once

#include <stdint.h>

struct __align__(2) bf16_t {
    uint16_t bits;
};

// `bits` holds one bf16 in its low 16 bits (the high 16 bits are ignored).
__device__ __forceinline__ float bf16_bits_to_f32(uint32_t bits) {
    uint32_t u = bits << 16;
    if ((bits & 0x7fffu) > 0x7f80u) u |= 0x00400000u;  // NaN: set the quiet bit, as half does
    return __uint_as_float(u);
}

__device__ __forceinline__ float bf16_to_f32(bf16_t b) { return bf16_bits_to_f32(b.bits); }

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    bf16_t b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (uint16_t)((u >> 16) | 0x0040u);  // NaN: keep sign and payload, make it quiet
        return b;
    }
    // Round to nearest even: adding 0x7fff plus the result's lowest bit carries into bit 16
    // exactly when the dropped half is > 0x8000, or == 0x8000 with an odd result. Cannot wrap:
    // the largest finite input 0xff7fffff + 0x8000 < 2^32.
    u += 0x7fffu + ((u >> 16) & 1u);
    b.bits = (uint16_t)(u >> 16);
    return b;
}

// Conversions to and from an element type T in {float, bf16_t}, for kernels templated on it.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16_t v) { return bf16_to_f32(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16_t from_f32<bf16_t>(float v) { return f32_to_bf16(v); }

// Four consecutive elements starting at p, converted to/from float4. The caller guarantees
// p is aligned to 4 * sizeof(T) bytes (16 for float, 8 for bf16_t); see is_aligned_vec4.
__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const bf16_t* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    return make_float4(bf16_bits_to_f32(u.x), bf16_bits_to_f32(u.x >> 16),
                       bf16_bits_to_f32(u.y), bf16_bits_to_f32(u.y >> 16));
}
__device__ __forceinline__ void store4(float* p, float4 v) {
    *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void store4(bf16_t* p, float4 v) {
    // Little-endian: the element at the lower address is the low half of each 32-bit word.
    uint2 u;
    u.x = (uint32_t)f32_to_bf16(v.x).bits | ((uint32_t)f32_to_bf16(v.y).bits << 16);
    u.y = (uint32_t)f32_to_bf16(v.z).bits | ((uint32_t)f32_to_bf16(v.w).bits << 16);
    *reinterpret_cast<uint2*>(p) = u;
}

// True when p may be used with load4 / store4.
template <typename T>
__device__ __forceinline__ bool is_aligned_vec4(const T* p) {
    return (reinterpret_cast<uintptr_t>(p) & (4 * sizeof(T) - 1)) == 0;
}
