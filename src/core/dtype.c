#include "dtype.h"

#include <math.h>
#include <string.h>

const rb_dtype_info rb_dtypes[RB_DTYPE_COUNT] = {
    [RB_F32] = {"f32", "F32", 4, 1},        [RB_F16] = {"f16", "F16", 2, 1},
    [RB_BF16] = {"bf16", "BF16", 2, 1},     [RB_I64] = {"i64", "I64", 8, 0},
    [RB_I32] = {"i32", "I32", 4, 0},        [RB_U8] = {"u8", "U8", 1, 0},
    [RB_F64] = {"f64", "F64", 8, 1},        [RB_I16] = {"i16", "I16", 2, 0},
    [RB_I8] = {"i8", "I8", 1, 0},           [RB_U16] = {"u16", "U16", 2, 0},
    [RB_U32] = {"u32", "U32", 4, 0},        [RB_U64] = {"u64", "U64", 8, 0},
    [RB_BOOL] = {"bool", "BOOL", 1, 0},     [RB_F8_E4M3] = {"f8_e4m3", "F8_E4M3", 1, 1},
    [RB_F8_E5M2] = {"f8_e5m2", "F8_E5M2", 1, 1},
};

int rb_dtype_from_safetensors(const char *name, size_t len, rb_dtype *out) {
    for (int t = 0; t < RB_DTYPE_COUNT; t++) {
        const char *s = rb_dtypes[t].safetensors;
        if (strlen(s) == len && memcmp(s, name, len) == 0) {
            *out = (rb_dtype)t;
            return 1;
        }
    }
    return 0;
}

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float rb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f)
        return u2f(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return u2f(sign);
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t rb_f32_to_f16(float f) {
    uint32_t u = f2u(f), sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 | ((a >> 13) & 0x3ff) : 0));
    if (a >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) { /* subnormal half (or zero): round a / 2^-24 to nearest even */
        float v = u2f(a) * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)nearbyintf(v));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1); /* round to nearest even on bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

uint16_t rb_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float rb_f8e4m3_to_f32(uint8_t v) { /* e4m3fn: bias 7, no inf, 0x7f/0xff = NaN */
    int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 0xf && man == 7)
        r = NAN;
    else if (exp == 0)
        r = ldexpf((float)man, -9);
    else
        r = ldexpf(1.0f + man / 8.0f, exp - 7);
    return sign ? -r : r;
}

float rb_f8e5m2_to_f32(uint8_t v) { /* e5m2 is the top byte of an f16 */
    return rb_f16_to_f32((uint16_t)(v << 8));
}

/* Bulk conversions: AVX-512 (F16C for f16, integer shifts for bf16) over 16 lanes, scalar tails.
 * Compiled for the build's -march; the scalar code defines the semantics. */
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

void rb_f16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
    for (; i < n; i++)
        dst[i] = rb_f16_to_f32(src[i]);
}

void rb_f32_to_f16_n(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++)
        dst[i] = rb_f32_to_f16(src[i]);
}

void rb_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_si512((void *)(dst + i), _mm512_slli_epi32(w, 16));
    }
#endif
    for (; i < n; i++)
        dst[i] = rb_bf16_to_f32(src[i]);
}

void rb_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    /* round to nearest even; NaN lanes are fixed up by the scalar rule */
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(src + i));
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, absmask), inf);
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
#endif
    for (; i < n; i++)
        dst[i] = rb_f32_to_bf16(src[i]);
}

void rb_convert_to_f32(float *dst, const void *src, rb_dtype t, size_t n) {
    const unsigned char *p = src;
    switch (t) {
    case RB_F32: memmove(dst, src, n * 4); return;
    case RB_F16: rb_f16_to_f32_n(dst, src, n); return;
    case RB_BF16: rb_bf16_to_f32_n(dst, src, n); return;
    default: break;
    }
    for (size_t i = 0; i < n; i++) {
        const unsigned char *e = p + i * rb_dtype_size(t);
        union { int64_t i64; int32_t i32; int16_t i16; int8_t i8; uint64_t u64; uint32_t u32;
                uint16_t u16; uint8_t u8; double f64; } v;
        memcpy(&v, e, rb_dtype_size(t));
        switch (t) {
        case RB_I64: dst[i] = (float)v.i64; break;
        case RB_I32: dst[i] = (float)v.i32; break;
        case RB_I16: dst[i] = (float)v.i16; break;
        case RB_I8: dst[i] = (float)v.i8; break;
        case RB_U64: dst[i] = (float)v.u64; break;
        case RB_U32: dst[i] = (float)v.u32; break;
        case RB_U16: dst[i] = (float)v.u16; break;
        case RB_U8: dst[i] = (float)v.u8; break;
        case RB_BOOL: dst[i] = v.u8 ? 1.0f : 0.0f; break;
        case RB_F64: dst[i] = (float)v.f64; break;
        case RB_F8_E4M3: dst[i] = rb_f8e4m3_to_f32(v.u8); break;
        case RB_F8_E5M2: dst[i] = rb_f8e5m2_to_f32(v.u8); break;
        default: dst[i] = NAN; break;
        }
    }
}

static double clampd(double v, double lo, double hi) { return v != v ? 0 : v < lo ? lo : v > hi ? hi : v; }

void rb_convert_from_f32(void *dst, rb_dtype t, const float *src, size_t n) {
    switch (t) {
    case RB_F32: memmove(dst, src, n * 4); return;
    case RB_F16: rb_f32_to_f16_n(dst, src, n); return;
    case RB_BF16: rb_f32_to_bf16_n(dst, src, n); return;
    default: break;
    }
    unsigned char *p = dst;
    for (size_t i = 0; i < n; i++) {
        unsigned char *e = p + i * rb_dtype_size(t);
        double d = src[i];
        switch (t) {
        case RB_I64: { int64_t v = (int64_t)clampd(nearbyint(d), -9.2e18, 9.2e18); memcpy(e, &v, 8); break; }
        case RB_I32: { int32_t v = (int32_t)clampd(nearbyint(d), INT32_MIN, INT32_MAX); memcpy(e, &v, 4); break; }
        case RB_I16: { int16_t v = (int16_t)clampd(nearbyint(d), INT16_MIN, INT16_MAX); memcpy(e, &v, 2); break; }
        case RB_I8: { int8_t v = (int8_t)clampd(nearbyint(d), INT8_MIN, INT8_MAX); memcpy(e, &v, 1); break; }
        case RB_U64: { uint64_t v = (uint64_t)clampd(nearbyint(d), 0, 1.8e19); memcpy(e, &v, 8); break; }
        case RB_U32: { uint32_t v = (uint32_t)clampd(nearbyint(d), 0, UINT32_MAX); memcpy(e, &v, 4); break; }
        case RB_U16: { uint16_t v = (uint16_t)clampd(nearbyint(d), 0, UINT16_MAX); memcpy(e, &v, 2); break; }
        case RB_U8: { uint8_t v = (uint8_t)clampd(nearbyint(d), 0, 255); memcpy(e, &v, 1); break; }
        case RB_BOOL: *e = d != 0; break;
        case RB_F64: memcpy(e, &d, 8); break;
        default: *e = 0; break; /* f8 output is not produced by relbooth */
        }
    }
}
