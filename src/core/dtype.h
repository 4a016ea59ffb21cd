/* Element types. The first six are the compute types; the rest exist so that every dtype a
 * safetensors or torch file may declare can be represented, inspected and converted. */
#ifndef RB_CORE_DTYPE_H
#define RB_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum rb_dtype {
    RB_F32 = 0,
    RB_F16,
    RB_BF16,
    RB_I64,
    RB_I32,
    RB_U8,
    RB_F64,
    RB_I16,
    RB_I8,
    RB_U16,
    RB_U32,
    RB_U64,
    RB_BOOL,
    RB_F8_E4M3,
    RB_F8_E5M2,
    RB_DTYPE_COUNT
} rb_dtype;

typedef struct rb_dtype_info {
    const char *name;        /* "f32" */
    const char *safetensors; /* "F32" */
    size_t size;             /* bytes per element */
    int is_float;
} rb_dtype_info;

extern const rb_dtype_info rb_dtypes[RB_DTYPE_COUNT];

static inline size_t rb_dtype_size(rb_dtype t) { return (unsigned)t < RB_DTYPE_COUNT ? rb_dtypes[t].size : 0; }
static inline const char *rb_dtype_name(rb_dtype t) {
    return (unsigned)t < RB_DTYPE_COUNT ? rb_dtypes[t].name : "invalid";
}
/* Lookup by safetensors name ("F32", "BF16", ...); returns 0 if unknown. */
int rb_dtype_from_safetensors(const char *name, size_t len, rb_dtype *out);

/* Scalar conversions (round-to-nearest-even, NaN preserved). */
float rb_f16_to_f32(uint16_t h);
uint16_t rb_f32_to_f16(float f);
static inline float rb_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
uint16_t rb_f32_to_bf16(float f);
float rb_f8e4m3_to_f32(uint8_t v);
float rb_f8e5m2_to_f32(uint8_t v);

/* Vectorised bulk conversions (AVX-512/F16C when the CPU has them). */
void rb_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void rb_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void rb_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void rb_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

/* Converts n contiguous elements of any dtype to f32 / from f32 (integers saturate on the way back). */
void rb_convert_to_f32(float *dst, const void *src, rb_dtype t, size_t n);
void rb_convert_from_f32(void *dst, rb_dtype t, const float *src, size_t n);

#endif
