/* rng: torch-compatible generators (src/core/rng.c) against numbers from PyTorch itself.
 *
 * CPU references: Debian's PyTorch 1.13 (python3-torch) on x86-64 with AVX-512 (torch uses its AVX2
 * kernel there; ATEN_CPU_CAPABILITY=avx2 and =avx512 give identical bits), produced once by:
 *
 *   import torch
 *   def fnv(x):   # FNV-1a 64 over the float32 little-endian bytes of the whole output
 *       h = 0xcbf29ce484222325
 *       for b in x.numpy().astype('<f4').tobytes(): h = ((h ^ b) * 0x100000001b3) % 2**64
 *       return h
 *   g = torch.Generator().manual_seed(seed)
 *   for (op, n) in calls:                      # op 'n' = torch.randn, 'u' = torch.rand
 *       x = (torch.randn if op == 'n' else torch.rand)(n, generator=g)
 *       print(op, n, [0, n // 2, n - 1], [float(x[i]).hex() for i in ...], fnv(x))
 *
 * Each case checks three values bit for bit and the whole output through its hash. The
 * RB_RNG_CPU_SCALAR cases were made the same way with ATEN_CPU_CAPABILITY=default (glibc 2.36 libm). */
#include "harness.h"

#include <stdint.h>

#include "core/rng.h"

typedef struct {
    int op; /* 'n' randn, 'u' rand */
    int n;
    int idx[3];
    double val[3];
    uint64_t fnv;
} call_ref;

typedef struct {
    uint64_t seed;
    int ncalls;
    call_ref calls[5];
} seq_ref;

/* seeds 0, 42, 2**32+5, 0xDEADBEEFCAFEBABE x sizes 1, 3, 15, 16, 17, 100, 256; [2,4,16,16]; call
 * sequences (randn 3,100,1,17,2 exercises the cached Box-Muller sample of the n < 16 path across
 * calls; rand 5, rand 20, randn 16); [1,4,128,128] for seeds 0 and 42. */
static const seq_ref cpu_cases[] = {
    {0x0ull, 1, {{'n', 1, {0, -1, -1}, {0x1.8a7eb80000000p+0, 0, 0}, 0x1877733c12d64cbcull}}},
    {0x0ull, 1, {{'n', 3, {0, 1, 2}, {0x1.8a7eb80000000p+0, -0x1.2c78a00000000p-2, -0x1.16e2920000000p+1}, 0x17825698d6de5189ull}}},
    {0x0ull, 1, {{'n', 15, {0, 7, 14}, {0x1.8a7eb80000000p+0, 0x1.ad11ca0000000p-1, -0x1.1239560000000p+0}, 0x52b8f3bcc098f4b9ull}}},
    {0x0ull, 1, {{'n', 16, {0, 8, 15}, {-0x1.20370a0000000p+0, 0x1.4a02700000000p-2, -0x1.fa6cf80000000p-3}, 0x28d49f8f92bf21d6ull}}},
    {0x0ull, 1, {{'n', 17, {0, 8, 16}, {-0x1.20370a0000000p+0, 0x1.df54aa0000000p-2, 0x1.dd18600000000p-1}, 0x9151e09be6bcf07aull}}},
    {0x0ull, 1, {{'n', 100, {0, 50, 99}, {-0x1.20370a0000000p+0, 0x1.0e2be80000000p+0, 0x1.dd04440000000p-3}, 0x6b680134d3d69e1bull}}},
    {0x0ull, 1, {{'n', 256, {0, 128, 255}, {-0x1.20370a0000000p+0, -0x1.c449d40000000p-1, 0x1.8fc3ea0000000p-2}, 0xf7c05e9426ab7052ull}}},
    {0x2aull, 1, {{'n', 1, {0, -1, -1}, {0x1.58c55c0000000p-2, 0, 0}, 0x339a81d29fc978d3ull}}},
    {0x2aull, 1, {{'n', 3, {0, 1, 2}, {0x1.58c55c0000000p-2, 0x1.07cd3a0000000p-3, 0x1.e02dce0000000p-3}, 0x37ecaea295c8b6deull}}},
    {0x2aull, 1, {{'n', 15, {0, 7, 14}, {0x1.58c55c0000000p-2, -0x1.46a78c0000000p-1, -0x1.fa58f40000000p-1}, 0x4c7fdcb26081ae6bull}}},
    {0x2aull, 1, {{'n', 16, {0, 8, 15}, {0x1.ed4a520000000p+0, -0x1.8117e00000000p-1, 0x1.865f3e0000000p-1}, 0x080ffa5fbeb15154ull}}},
    {0x2aull, 1, {{'n', 17, {0, 8, 16}, {0x1.ed4a520000000p+0, 0x1.6c668a0000000p-2, -0x1.3d29040000000p-2}, 0x91ae8bd790a50356ull}}},
    {0x2aull, 1, {{'n', 100, {0, 50, 99}, {0x1.ed4a520000000p+0, 0x1.3f95f60000000p-4, 0x1.3c0c380000000p-1}, 0x7ea02704af7a98a3ull}}},
    {0x2aull, 1, {{'n', 256, {0, 128, 255}, {0x1.ed4a520000000p+0, 0x1.ee608a0000000p+0, 0x1.c795c80000000p-3}, 0x631e099571e21016ull}}},
    {0x100000005ull, 1, {{'n', 1, {0, -1, -1}, {-0x1.f276a80000000p-2, 0, 0}, 0x98e5cffa3bb28dc7ull}}},
    {0x100000005ull, 1, {{'n', 3, {0, 1, 2}, {-0x1.f276a80000000p-2, -0x1.35281a0000000p-1, -0x1.1dbeca0000000p-1}, 0x60daa8e7948abc26ull}}},
    {0x100000005ull, 1, {{'n', 15, {0, 7, 14}, {-0x1.f276a80000000p-2, -0x1.866de40000000p-1, 0x1.5e896c0000000p-1}, 0x2ba446d6f6e8dcbbull}}},
    {0x100000005ull, 1, {{'n', 16, {0, 8, 15}, {0x1.d7a2ee0000000p+0, 0x1.90258c0000000p-2, -0x1.908e3a0000000p-1}, 0x3c61a7c281fb0730ull}}},
    {0x100000005ull, 1, {{'n', 17, {0, 8, 16}, {0x1.d7a2ee0000000p+0, 0x1.4eaa760000000p+1, 0x1.7d53680000000p-1}, 0x41fad463f58112d2ull}}},
    {0x100000005ull, 1, {{'n', 100, {0, 50, 99}, {0x1.d7a2ee0000000p+0, 0x1.bad9460000000p-3, -0x1.1891100000000p+0}, 0x821693f9a621b93aull}}},
    {0x100000005ull, 1, {{'n', 256, {0, 128, 255}, {0x1.d7a2ee0000000p+0, 0x1.8bbf760000000p-2, 0x1.65ddc40000000p-1}, 0x2425dcc4d58698b8ull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 1, {0, -1, -1}, {0x1.74ef980000000p+0, 0, 0}, 0x1ecf7ee01d175f2full}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 3, {0, 1, 2}, {0x1.74ef980000000p+0, 0x1.f3084e0000000p-2, 0x1.7030b60000000p-6}, 0x797f46cc1b89d334ull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 15, {0, 7, 14}, {0x1.74ef980000000p+0, -0x1.09d2560000000p-5, 0x1.f61a060000000p-3}, 0xcf8a4ed8ef710739ull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 16, {0, 8, 15}, {0x1.92517e0000000p-3, 0x1.662e9e0000000p+0, 0x1.17f66c0000000p+0}, 0x7b4adab5f6a572ecull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 17, {0, 8, 16}, {0x1.92517e0000000p-3, 0x1.1587d00000000p+0, 0x1.3a04180000000p+0}, 0x0f47bcf534e1e77cull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 100, {0, 50, 99}, {0x1.92517e0000000p-3, 0x1.1898e40000000p+0, -0x1.3172720000000p+0}, 0xede9050dfb2beca9ull}}},
    {0xdeadbeefcafebabeull, 1, {{'n', 256, {0, 128, 255}, {0x1.92517e0000000p-3, -0x1.00dd180000000p+0, -0x1.d82e640000000p+0}, 0x076b72c7f8c4cba8ull}}},
    {42, 1, {{'n', 2048, {0, 1024, 2047}, {0x1.ed4a520000000p+0, -0x1.398bae0000000p+0, -0x1.68dfec0000000p-2}, 0x31a94ff44916c548ull}}},
    {0, 5, {{'n', 3, {0, 1, 2}, {0x1.8a7eb80000000p+0, -0x1.2c78a00000000p-2, -0x1.16e2920000000p+1}, 0x17825698d6de5189ull}, {'n', 100, {0, 50, 99}, {-0x1.6cacea0000000p-2, -0x1.256a5c0000000p-1, -0x1.9c34e60000000p-2}, 0x2257dbeb2a028ed7ull}, {'n', 1, {0, -1, -1}, {0x1.23096c0000000p-1, 0, 0}, 0xd889e31248546ad7ull}, {'n', 17, {0, 8, 16}, {0x1.7cb9620000000p-4, 0x1.2780820000000p-2, -0x1.6899380000000p-1}, 0x4170d05d1e47794eull}, {'n', 2, {0, 1, -1}, {0x1.5586340000000p-1, -0x1.6bdbf20000000p-1, 0}, 0x8e98a4e073a43cc7ull}}},
    {3, 3, {{'u', 5, {0, 2, 4}, {0x1.176a000000000p-8, 0x1.24b3e40000000p-2, 0x1.e2eee00000000p-2}, 0x8c1d3bf6b6668c08ull}, {'u', 20, {0, 10, 19}, {0x1.ec79000000000p-5, 0x1.d66e540000000p-2, 0x1.726fc00000000p-3}, 0x15e243dcfb8598acull}, {'n', 16, {0, 8, 15}, {0x1.38fc440000000p-1, 0x1.a451ec0000000p-3, -0x1.15b9460000000p-2}, 0x256f484e1673f9efull}}},
    {5, 2, {{'n', 3, {0, 1, 2}, {-0x1.f276a80000000p-2, -0x1.35281a0000000p-1, -0x1.1dbeca0000000p-1}, 0x60daa8e7948abc26ull}, {'n', 3, {0, 1, 2}, {0x1.55c5be0000000p-1, -0x1.944e5e0000000p-3, 0x1.f15a420000000p+0}, 0xf1327a6e6fdaf06eull}}},
    {0, 1, {{'n', 65536, {0, 32768, 65535}, {-0x1.20370a0000000p+0, -0x1.f4be040000000p-1, -0x1.7532a60000000p+0}, 0x17259a042c281ef1ull}}},
    {42, 1, {{'n', 65536, {0, 32768, 65535}, {0x1.ed4a520000000p+0, -0x1.914be20000000p-1, 0x1.9f1a480000000p+0}, 0xde5f08fce9638b4aull}}},
};

static const seq_ref cpu_scalar_cases[] = {
    {7, 1, {{'n', 100, {0, 50, 99}, {-0x1.a3e8ac0000000p-1, -0x1.dabf640000000p-7, 0x1.47d1ce0000000p-1}, 0xb01ddcca8cdf8d6bull}}},
    {7, 1, {{'n', 65536, {0, 32768, 65535}, {-0x1.a3e8ac0000000p-1, -0x1.1cd6620000000p+0, 0x1.e2a2f60000000p+0}, 0xee597351fa07340full}}},
};

static uint64_t fnv1a(const float *x, int64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)x;
    for (int64_t i = 0; i < 4 * n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void run_cases(const seq_ref *cases, size_t ncases, rb_rng_cpu_path path) {
    static float buf[65536];
    for (size_t c = 0; c < ncases; c++) {
        const seq_ref *s = &cases[c];
        rb_rng g;
        rb_rng_torch_cpu(&g, s->seed);
        g.cpu_path = path;
        for (int k = 0; k < s->ncalls; k++) {
            const call_ref *r = &s->calls[k];
            rb_status st = r->op == 'n' ? rb_rng_randn(&g, buf, r->n) : rb_rng_rand(&g, buf, r->n);
            REQUIRE(st == RB_OK, "seed %llu call %d: %s", (unsigned long long)s->seed, k, rb_last_error());
            for (int j = 0; j < 3; j++)
                if (r->idx[j] >= 0)
                    CHECK(same_bits(buf[r->idx[j]], (float)r->val[j]), "seed %#llx call %d (%c %d) x[%d] = %.9g, torch %.9g",
                          (unsigned long long)s->seed, k, r->op, r->n, r->idx[j], buf[r->idx[j]], r->val[j]);
            CHECK(fnv1a(buf, r->n) == r->fnv, "seed %#llx call %d (%c %d): output hash differs from torch",
                  (unsigned long long)s->seed, k, r->op, r->n);
        }
    }
}

static void t_cpu_randn_avx2(void) { run_cases(cpu_cases, sizeof cpu_cases / sizeof *cpu_cases, RB_RNG_CPU_AVX2); }

static void t_cpu_randn_scalar_path(void) {
    run_cases(cpu_scalar_cases, sizeof cpu_scalar_cases / sizeof *cpu_scalar_cases, RB_RNG_CPU_SCALAR);
}

/* [1,4,128,128] seed 0, the SDXL latent shape: sums from torch (x.double().sum(), (x.double()**2).sum()). */
static void t_cpu_latents_sums(void) {
    static float x[65536];
    rb_rng g;
    rb_rng_torch_cpu(&g, 0);
    REQUIRE(rb_rng_randn(&g, x, 65536) == RB_OK, "%s", rb_last_error());
    double s = 0, s2 = 0;
    for (int i = 0; i < 65536; i++)
        s += x[i], s2 += (double)x[i] * x[i];
    CHECK(same_bits(x[1], (float)-0x1.2701140000000p+0), "x[1] = %.9g", x[1]);
    CHECK(fabs(s - -243.91198515811266) < 1e-9, "sum %.17g", s);
    CHECK(fabs(s2 - 65371.873561335837) < 1e-8, "sumsq %.17g", s2);
    CHECK(fabs(s2 / 65536 - 1) < 0.01 && fabs(s / 65536) < 0.01, "moments of N(0,1)");
}

/* MT19937 itself: 10000th output of std::mt19937 seeded 5489 is 4123659995 (C++11 [rand.predef]). */
static void t_mt19937_known_answer(void) {
    rb_rng g;
    rb_rng_torch_cpu(&g, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++)
        v = rb_rng_mt_next(&g);
    CHECK(v == 4123659995u, "mt19937(5489) #10000 = %u", v);
    rb_rng h;
    rb_rng_torch_cpu(&h, (UINT64_C(7) << 32) | 5489); /* torch keeps only the low 32 bits */
    rb_rng_torch_cpu(&g, 5489);
    for (int i = 0; i < 1000; i++)
        CHECK(rb_rng_mt_next(&g) == rb_rng_mt_next(&h), "high seed bits ignored (draw %d)", i);
}

/* ------------------------------------------------------------------------------------ CUDA */

/* Random123 tests/kat_vectors (DEShawResearch/random123 v1.14.0): philox4x32 10 ctr key -> out. */
static void t_philox_kat(void) {
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e,
         0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb,
         0x5001e420, 0x24126ea1},
    };
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        rb_philox4x32_10(kat[t], kat[t] + 4, out);
        for (int i = 0; i < 4; i++)
            CHECK(out[i] == kat[t][6 + i], "kat %d word %d: %08x, want %08x", t, i, out[i], kat[t][6 + i]);
    }
}

/* torch.manual_seed(0); torch.randn(8, 8, device="cuda") as printed (4 decimals) in the blog post
 * "CUDA Mode - Fusing Kernels Talk" (kapilsh, 2024-05-30); its first 12 values also match, to 8
 * digits, the docstring of AUTOMATIC1111 stable-diffusion-webui modules/rng_philox.py (seed 0,
 * shape (3, 4)): a numpy reimplementation of torch CUDA randn. No GPU here, so these are the reference. */
static void t_cuda_randn_published(void) {
    static const float torch_cuda[64] = {
        -0.9247, -0.4253, -2.6438, 0.1452,  -0.1209, -0.5797, -0.6229, -0.3284, -1.0745, -0.3631, -1.6711,
        2.2655,  0.3117,  -0.1842, 1.2866,  1.1820,  -0.1271, 1.2169,  1.4353,  1.0605,  -0.4941, -1.4244,
        -0.7244, -1.2973, 0.0697,  -0.0074, 1.8969,  0.6878,  -0.0779, -0.8373, 1.3506,  -0.2879, -0.5965,
        -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435,  1.5150,  0.0141,  0.4532,  1.6349,  0.7124,
        -0.1806, 1.0252,  -1.4622, -0.7554, -0.1836, 0.3824,  0.3918,  -0.0830, 0.8971,  -1.1123, 0.1116,
        0.4863,  -0.5499, -0.3231, -0.5469, 0.9049,  0.2837,  0.1210,  0.4730,  -1.0823};
    static const double a1111[12] = {-0.92466259, -0.42534415, -2.6438457,  0.14518388,
                                     -0.12086647, -0.57972564, -0.62285122, -0.32838709,
                                     -1.07454231, -0.36314407, -1.67105067, 2.26550497};
    float x[64];
    rb_rng g;
    rb_rng_torch_cuda(&g, 0);
    REQUIRE(rb_rng_randn(&g, x, 64) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < 64; i++)
        CHECK(fabsf(x[i] - torch_cuda[i]) <= 5.1e-5f, "x[%d] = %.6f, torch cuda %.4f", i, x[i], torch_cuda[i]);
    /* 2e-6: the GPU's logf/__sincosf are not libm; A1111 itself computes in double. */
    for (int i = 0; i < 12; i++)
        CHECK(fabs(x[i] - a1111[i]) <= 2e-6, "x[%d] = %.8f, rng_philox %.8f", i, x[i], a1111[i]);
    CHECK(g.philox_offset == 4, "offset after one small call = %llu", (unsigned long long)g.philox_offset);
}

/* Independent double-precision model of curand_normal4 element `ii` of thread `idx`, counter block c. */
static double ref_normal4(uint64_t seed, uint64_t c, uint64_t idx, int ii) {
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), (uint32_t)idx, (uint32_t)(idx >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, r[4];
    rb_philox4x32_10(ctr, key, r);
    double u = r[ii / 2 * 2] * 0x1p-32 + 0x1p-33;
    double v = (r[ii / 2 * 2 + 1] * 0x1p-32 + 0x1p-33) * 6.283185307179586;
    double s = sqrt(-2 * log(u));
    return ii % 2 ? s * cos(v) : s * sin(v);
}

/* Successive calls advance the philox offset by 4 per curand_normal4 round; a launch bound (small
 * GPU) makes threads loop: element idx + k*4*stride + ii*stride comes from round k, value ii. */
static void t_cuda_layout_and_offsets(void) {
    static float x[2000];
    rb_rng g;
    rb_rng_torch_cuda(&g, 1234);
    REQUIRE(rb_rng_randn(&g, x, 10) == RB_OK, "randn");
    REQUIRE(rb_rng_randn(&g, x, 300) == RB_OK, "randn");
    CHECK(g.philox_offset == 8, "offset %llu", (unsigned long long)g.philox_offset);
    for (int i = 0; i < 300; i += 7)
        CHECK(fabs(x[i] - ref_normal4(1234, 1, (uint64_t)i, 0)) < 2e-6, "second call x[%d]", i);
    rb_rng_cuda_set_device(&g, 1, 256); /* one block of 256 threads: stride 256 */
    REQUIRE(rb_rng_randn(&g, x, 2000) == RB_OK, "randn");
    CHECK(g.philox_offset == 8 + 8, "2000 elements on 256 threads = 2 rounds: offset %llu",
          (unsigned long long)g.philox_offset);
    for (int li = 0; li < 2000; li += 13) {
        int idx = li % 256, k = li / 1024, ii = (li % 1024) / 256;
        CHECK(fabs(x[li] - ref_normal4(1234, 2 + (uint64_t)k, (uint64_t)idx, ii)) < 2e-6, "x[%d]", li);
    }
    rb_rng big;
    rb_rng_torch_cuda(&big, (UINT64_C(1) << 40) + 3); /* seed's high word is philox key[1] */
    REQUIRE(rb_rng_randn(&big, x, 5) == RB_OK, "randn");
    CHECK(fabs(x[4] - ref_normal4((UINT64_C(1) << 40) + 3, 0, 4, 0)) < 2e-6, "64-bit seed");
}

/* ------------------------------------------------------------------------------------ state */

static void t_state_roundtrip(void) {
    static float a[300], b[300];
    unsigned char st[8192];
    REQUIRE(rb_rng_state_size() <= sizeof st, "state size %zu", rb_rng_state_size());
    for (int kind = 0; kind < 2; kind++) {
        rb_rng g, h;
        if (kind)
            rb_rng_torch_cuda(&g, 99);
        else
            rb_rng_torch_cpu(&g, 99);
        REQUIRE(rb_rng_randn(&g, a, 3) == RB_OK, "randn"); /* leaves a cached sample on the CPU one */
        REQUIRE(rb_rng_state_get(&g, st, sizeof st) == RB_OK, "%s", rb_last_error());
        REQUIRE(rb_rng_randn(&g, a, 1) == RB_OK && rb_rng_randn(&g, a + 1, 299) == RB_OK, "randn");
        memset(&h, 0xab, sizeof h);
        REQUIRE(rb_rng_state_set(&h, st, rb_rng_state_size()) == RB_OK, "%s", rb_last_error());
        REQUIRE(rb_rng_randn(&h, b, 1) == RB_OK && rb_rng_randn(&h, b + 1, 299) == RB_OK, "randn");
        CHECK(memcmp(a, b, sizeof a) == 0, "kind %d: restored generator continues identically", kind);
    }
    /* hostile bytes are refused */
    rb_rng g;
    rb_rng_torch_cpu(&g, 1);
    REQUIRE(rb_rng_state_get(&g, st, sizeof st) == RB_OK, "get");
    CHECK(rb_rng_state_set(&g, st, rb_rng_state_size() - 1) == RB_ERR_FORMAT, "short");
    st[0] ^= 1;
    CHECK(rb_rng_state_set(&g, st, rb_rng_state_size()) == RB_ERR_FORMAT, "magic");
    st[0] ^= 1;
    st[24] = 0xff, st[25] = 0xff; /* mt_left */
    CHECK(rb_rng_state_set(&g, st, rb_rng_state_size()) == RB_ERR_FORMAT && strstr(rb_last_error(), "mt"),
          "mt_left out of range: %s", rb_last_error());
    CHECK(rb_rng_randn(NULL, a, 1) == RB_ERR_INVALID, "null generator");
    CHECK(rb_rng_randn(&g, NULL, 5) == RB_ERR_INVALID, "null output");
}

int main(void) {
    RUN(t_cpu_randn_avx2);
    RUN(t_cpu_randn_scalar_path);
    RUN(t_cpu_latents_sums);
    RUN(t_mt19937_known_answer);
    RUN(t_philox_kat);
    RUN(t_cuda_randn_published);
    RUN(t_cuda_layout_and_offsets);
    RUN(t_state_roundtrip);
    return t_done();
}
