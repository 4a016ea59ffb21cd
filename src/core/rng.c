/* PyTorch-compatible normal noise. Sources (torch 1.13 and 2.x are identical here):
 *   aten/src/ATen/core/MT19937RNGEngine.h       MT19937, seeded with seed & 0xffffffff
 *   aten/src/ATen/CPUGeneratorImpl.cpp          random64() = (first << 32) | second
 *   aten/src/ATen/core/TransformationHelper.h   uniform_real: (bits & (2^digits - 1)) * 2^-digits
 *   aten/src/ATen/core/DistributionsHelper.h    normal_distribution<double> (caches r*sin)
 *   aten/src/ATen/native/cpu/DistributionTemplates.h  normal_fill / normal_fill_AVX2
 *   aten/src/ATen/native/cpu/avx_mathfun.h      log256_ps, sincos256_ps (Cephes polynomials)
 *   aten/src/ATen/native/cuda/DistributionTemplates.h + curand_philox4x32_x.h, curand_normal.h
 *
 * Floating-point expressions here must not be contracted into FMAs except where fmaf() is written:
 * -std=c11 makes GCC use -ffp-contract=off, which the bit-exact tests rely on. */
#include "rng.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- MT19937 (at::mt19937) */

static void mt_seed(rb_rng *g, uint64_t seed) {
    g->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < RB_MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + j;
    g->mt_left = 1;
    g->mt_next = 0;
}

static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
    uint32_t mix = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mix >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_next_state(rb_rng *g) {
    uint32_t *s = g->mt;
    enum { N = RB_MT_N, M = 397 };
    int j = 0;
    for (; j < N - M; j++)
        s[j] = s[j + M] ^ mt_twist(s[j], s[j + 1]);
    for (; j < N - 1; j++)
        s[j] = s[j + M - N] ^ mt_twist(s[j], s[j + 1]);
    s[N - 1] = s[M - 1] ^ mt_twist(s[N - 1], s[0]);
    g->mt_left = N;
    g->mt_next = 0;
}

uint32_t rb_rng_mt_next(rb_rng *g) {
    if (--g->mt_left == 0)
        mt_next_state(g);
    uint32_t y = g->mt[g->mt_next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static inline uint64_t mt_random64(rb_rng *g) {
    uint64_t hi = rb_rng_mt_next(g);
    uint64_t lo = rb_rng_mt_next(g);
    return (hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits */
static inline float uniform_f32(rb_rng *g) {
    return (float)(rb_rng_mt_next(g) & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): 53 random bits of random64() */
static inline double uniform_f64(rb_rng *g) {
    return (double)(mt_random64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1), with the generator's cached second sample. */
static double normal_f64(rb_rng *g) {
    if (g->has_next_double) {
        g->has_next_double = 0;
        return g->next_double;
    }
    const double pi = 3.14159265358979323846;
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * pi * u1;
    g->next_double = r * sin(theta);
    g->has_next_double = 1;
    return r * cos(theta);
}

/* ------------------------------------------- avx_mathfun.h, one lane, with GCC's FMA contraction.
 * torch compiles the AVX2 kernels with -mfma and GCC's default -ffp-contract=fast, so every
 * _mm256_mul_ps whose only use is an add/sub became a vfmadd. The fmaf() calls below sit exactly
 * where that happened; the tests against torch's output check it bit for bit. */

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* log256_ps for x in (0, 1] (Box-Muller never passes anything else). */
static float cephes_logf(float x) {
    const float min_norm = f32_from_bits(0x00800000u);
    if (x < min_norm)
        x = min_norm;
    int32_t imm0 = (int32_t)(f32_bits(x) >> 23);
    x = f32_from_bits((f32_bits(x) & ~0x7f800000u) | f32_bits(0.5f));
    float e = (float)(imm0 - 0x7f);
    e = e + 1.0f;
    float tmp = 0.0f;
    if (x < 0.707106781186547524f) {
        tmp = x;
        e = e - 1.0f;
    }
    x = x - 1.0f;
    x = x + tmp;
    float z = x * x;
    float y = fmaf(7.0376836292E-2f, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, +1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, +2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, +3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, 0.693359375f, x);
    return x;
}

/* sincos256_ps for x >= 0 (theta = 2*pi*u in [0, 2*pi)). */
static void cephes_sincosf(float x, float *s, float *c) {
    float y = x * 1.27323954473516f; /* 4 / pi */
    int32_t j = (int32_t)y;          /* cvttps: truncation */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    int poly_sin = (j & 2) == 0; /* sine uses the sine polynomial */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float vs = poly_sin ? ys : yc, vc = poly_sin ? yc : ys;
    *s = f32_from_bits(f32_bits(vs) ^ sign_sin);
    *c = f32_from_bits(f32_bits(vc) ^ sign_cos);
}

/* normal_fill_16_AVX2 / normal_fill_16 on data[0..16): pairs (j, j + 8). Mean 0, std 1. */
static void normal_fill_16(float *data, rb_rng_cpu_path path) {
    const double pi = 3.14159265358979323846;
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - data[j];
        float u2 = data[j + 8];
        if (path == RB_RNG_CPU_AVX2) {
            float radius = sqrtf(-2.0f * cephes_logf(u1));
            float theta = (float)(2.0 * pi) * u2;
            float s, c;
            cephes_sincosf(theta, &s, &c);
            data[j] = radius * c;
            data[j + 8] = radius * s;
        } else {
            float radius = sqrtf(-2.0f * logf(u1));
            float theta = (float)(2.0 * pi * (double)u2);
            data[j] = radius * cosf(theta);
            data[j + 8] = radius * sinf(theta);
        }
    }
}

/* ---------------------------------------------------------------- Philox4x32-10 (Random123) */

void rb_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* curand's _curand_box_muller(x, y) -> (s*sin v, s*cos v). u and v are formed as curand does (float,
 * y*C + C/2 contracted by nvcc); logf/sin/cos are evaluated in double and rounded, where the GPU uses
 * its ~1-ulp logf and the __sincosf approximation: results differ from the GPU by a few ulp. */
static void curand_box_muller(uint32_t x, uint32_t y, float *r_sin, float *r_cos) {
    const float inv32 = 2.3283064e-10f;           /* CURAND_2POW32_INV */
    const float inv32_2pi = 2.3283064e-10f * 6.2831855f; /* CURAND_2POW32_INV_2PI */
    float u = fmaf((float)x, inv32, inv32 / 2.0f);
    float v = fmaf((float)y, inv32_2pi, inv32_2pi / 2.0f);
    float s = sqrtf(-2.0f * (float)log((double)u));
    *r_sin = (float)sin((double)v) * s;
    *r_cos = (float)cos((double)v) * s;
}

/* torch CUDA normal_: distribution_elementwise_grid_stride_kernel<unroll 4> with curand_normal4.
 * Thread idx (of grid*256) runs curand_init(seed, idx, offset) and, per loop step k, one
 * curand_normal4 whose 4 values go to elements idx + k*4*stride + ii*stride (stride = grid*256). */
static void cuda_randn(rb_rng *g, float *out, int64_t n) {
    const uint64_t block = 256;
    uint64_t grid = ((uint64_t)n + block - 1) / block;
    if (g->cuda_max_blocks && grid > g->cuda_max_blocks)
        grid = g->cuda_max_blocks;
    const uint64_t stride = grid * block;
    const uint64_t calls = ((uint64_t)n - 1) / (stride * 4) + 1; /* curand_normal4 calls per thread */
    const uint64_t base = g->philox_offset / 4;
    g->philox_offset += calls * 4; /* philox_cuda_state(counter_offset), already a multiple of 4 */
    const uint32_t key[2] = {(uint32_t)g->seed, (uint32_t)(g->seed >> 32)};
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t idx = 0; idx < (int64_t)stride; idx++) {
        for (uint64_t k = 0; k < calls; k++) {
            uint64_t lin = (uint64_t)idx + k * 4 * stride;
            if (lin >= (uint64_t)n)
                break;
            uint64_t c = base + k;
            const uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), (uint32_t)idx,
                                     (uint32_t)((uint64_t)idx >> 32)};
            uint32_t r[4];
            float v[4];
            rb_philox4x32_10(ctr, key, r);
            curand_box_muller(r[0], r[1], &v[0], &v[1]);
            curand_box_muller(r[2], r[3], &v[2], &v[3]);
            for (int ii = 0; ii < 4; ii++) {
                uint64_t li = lin + (uint64_t)ii * stride;
                if (li < (uint64_t)n)
                    out[li] = v[ii];
            }
        }
    }
}

/* ---------------------------------------------------------------- public API */

void rb_rng_torch_cpu(rb_rng *g, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->kind = RB_RNG_TORCH_CPU;
    g->seed = seed;
    g->cpu_path = RB_RNG_CPU_AVX2;
    mt_seed(g, seed);
}

void rb_rng_torch_cuda(rb_rng *g, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->kind = RB_RNG_TORCH_CUDA;
    g->seed = seed;
}

void rb_rng_cuda_set_device(rb_rng *g, uint32_t sm_count, uint32_t max_threads_per_sm) {
    g->cuda_max_blocks = sm_count * (max_threads_per_sm / 256);
}

static rb_status check_args(const rb_rng *g, const float *out, int64_t n, const char *fn) {
    if (!g || (g->kind != RB_RNG_TORCH_CPU && g->kind != RB_RNG_TORCH_CUDA))
        return rb_error(RB_ERR_INVALID, "%s: generator not initialised", fn);
    if (n < 0 || (n > 0 && !out))
        return rb_error(RB_ERR_INVALID, "%s: bad output (n = %lld)", fn, (long long)n);
    if (g->kind == RB_RNG_TORCH_CUDA && n > INT32_MAX)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: %lld elements exceed torch's 32-bit CUDA indexing", fn,
                        (long long)n);
    return RB_OK;
}

rb_status rb_rng_randn(rb_rng *g, float *out, int64_t n) {
    RB_TRY(check_args(g, out, n, "rb_rng_randn"));
    if (n == 0)
        return RB_OK;
    if (g->kind == RB_RNG_TORCH_CUDA) {
        cuda_randn(g, out, n);
        return RB_OK;
    }
    if (n < 16) { /* cpu_serial_kernel with normal_distribution<double> */
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(g);
        return RB_OK;
    }
    /* normal_fill: all uniforms first, then Box-Muller per 16-block; a ragged tail redraws the last 16 */
    for (int64_t i = 0; i < n; i++)
        out[i] = uniform_f32(g);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i, g->cpu_path);
    if (n % 16) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(g);
        normal_fill_16(tail, g->cpu_path);
    }
    return RB_OK;
}

rb_status rb_rng_rand(rb_rng *g, float *out, int64_t n) {
    RB_TRY(check_args(g, out, n, "rb_rng_rand"));
    if (g->kind != RB_RNG_TORCH_CPU)
        return rb_error(RB_ERR_UNSUPPORTED, "rb_rng_rand: only the torch CPU generator is implemented");
    for (int64_t i = 0; i < n; i++)
        out[i] = uniform_f32(g);
    return RB_OK;
}

/* ---------------------------------------------------------------- state bytes
 * "RBRNG\0\0\1" | kind u32 | cpu_path u32 | seed u64 | mt_left u32 | mt_next u32 | mt[624] u32 |
 * has_next_double u32 | next_double (IEEE bits) u64 | philox_offset u64 | cuda_max_blocks u32 */

#define STATE_MAGIC "RBRNG\0\0\1"
#define STATE_SIZE (8 + 4 + 4 + 8 + 4 + 4 + 4 * RB_MT_N + 4 + 8 + 8 + 4)

size_t rb_rng_state_size(void) { return STATE_SIZE; }

static void put32(uint8_t **p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        *(*p)++ = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t **p, uint64_t v) {
    put32(p, (uint32_t)v);
    put32(p, (uint32_t)(v >> 32));
}
static uint32_t get32(const uint8_t **p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)(*(*p)++) << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t **p) {
    uint64_t lo = get32(p);
    return lo | ((uint64_t)get32(p) << 32);
}

rb_status rb_rng_state_get(const rb_rng *g, void *buf, size_t size) {
    if (!g || !buf || size < STATE_SIZE)
        return rb_error(RB_ERR_INVALID, "rb_rng_state_get: buffer of %zu bytes, need %d", size, STATE_SIZE);
    uint8_t *p = buf;
    memcpy(p, STATE_MAGIC, 8);
    p += 8;
    put32(&p, (uint32_t)g->kind);
    put32(&p, (uint32_t)g->cpu_path);
    put64(&p, g->seed);
    put32(&p, (uint32_t)g->mt_left);
    put32(&p, g->mt_next);
    for (int i = 0; i < RB_MT_N; i++)
        put32(&p, g->mt[i]);
    put32(&p, (uint32_t)g->has_next_double);
    uint64_t nd;
    memcpy(&nd, &g->next_double, 8);
    put64(&p, nd);
    put64(&p, g->philox_offset);
    put32(&p, g->cuda_max_blocks);
    return RB_OK;
}

rb_status rb_rng_state_set(rb_rng *g, const void *buf, size_t size) {
    if (!g || !buf || size != STATE_SIZE)
        return rb_error(RB_ERR_FORMAT, "rng state: %zu bytes, expected %d", size, STATE_SIZE);
    const uint8_t *p = buf;
    if (memcmp(p, STATE_MAGIC, 8) != 0)
        return rb_error(RB_ERR_FORMAT, "rng state: bad magic or version");
    p += 8;
    rb_rng t;
    memset(&t, 0, sizeof t);
    t.kind = (rb_rng_kind)get32(&p);
    t.cpu_path = (rb_rng_cpu_path)get32(&p);
    t.seed = get64(&p);
    t.mt_left = (int32_t)get32(&p);
    t.mt_next = get32(&p);
    for (int i = 0; i < RB_MT_N; i++)
        t.mt[i] = get32(&p);
    t.has_next_double = (int)get32(&p);
    uint64_t nd = get64(&p);
    memcpy(&t.next_double, &nd, 8);
    t.philox_offset = get64(&p);
    t.cuda_max_blocks = get32(&p);
    if (t.kind != RB_RNG_TORCH_CPU && t.kind != RB_RNG_TORCH_CUDA)
        return rb_error(RB_ERR_FORMAT, "rng state: unknown generator kind %u", (unsigned)t.kind);
    if (t.cpu_path != RB_RNG_CPU_AVX2 && t.cpu_path != RB_RNG_CPU_SCALAR)
        return rb_error(RB_ERR_FORMAT, "rng state: unknown cpu path %u", (unsigned)t.cpu_path);
    /* same validity rule as at::mt19937::is_valid, plus next_ + left_ consistency */
    if (t.kind == RB_RNG_TORCH_CPU && (t.mt_left < 1 || t.mt_left > RB_MT_N || t.mt_next > RB_MT_N || t.has_next_double > 1 ||
        t.has_next_double < 0))
        return rb_error(RB_ERR_FORMAT, "rng state: mt left %d / next %u out of range", t.mt_left, t.mt_next);
    if (t.kind == RB_RNG_TORCH_CPU && t.mt_left != 1 && (int64_t)t.mt_next + t.mt_left != RB_MT_N + 1)
        return rb_error(RB_ERR_FORMAT, "rng state: mt left %d and next %u disagree", t.mt_left, t.mt_next);
    if (t.philox_offset % 4)
        return rb_error(RB_ERR_FORMAT, "rng state: philox offset %llu not a multiple of 4",
                        (unsigned long long)t.philox_offset);
    *g = t;
    return RB_OK;
}
