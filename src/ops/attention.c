/* Scaled-dot-product attention, flash-attention style (see attention.h).
 *
 * Work is split into (b, h, query tile of QT = 64 rows). For a query tile we keep Q transposed and
 * pre-scaled, Qt [D, QT], and walk the keys in blocks of KB: the score tile is computed transposed,
 * St [KB, QT] = K_blk Qt, so that the softmax statistics of the QT query rows are plain vertical
 * vector ops across the key rows (no horizontal reductions), and P V reads V rows straight from
 * the input. All products go through one register-blocked tile GEMM (gemm_tile) whose left operand
 * is read by broadcast with arbitrary strides, which covers A, A^T and packed tiles alike. */
#include "attention.h"

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <string.h>
#include <time.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "core/mem.h"
#include "ops.h"

#define QT 64 /* query rows per tile: 4 AVX-512 vectors, the column width of every score tile */
#define KB 128 /* keys per block */
#define SB 512 /* backward: keys whose K, V, dK, dV (4 x SB x 64 floats) stay in L2 across query tiles */

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* ---- tile GEMM: C[r, n] (+)= alpha * sum_k A[r*ars + k*aks] * B[k*ldb + n] ---- */

#ifdef __AVX512F__
/* mr rows x nv vectors of C in registers; the last vector is masked. Inlined with constant mr/nv. */
static inline __attribute__((always_inline)) void micro(const int mr, const int nv, __mmask16 last, float *C,
                                                        int64_t ldc, const float *A, int64_t ars, int64_t aks,
                                                        const float *B, int64_t ldb, int K, float alpha,
                                                        int overwrite) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb, *a = A + k * aks;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            bv[v] = v == nv - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
            /* keep B in a register: folded into each FMA it would be loaded mr times, and Zen 4's
             * one 512-bit load per cycle would then bound the kernel below its FMA rate */
            __asm__("" : "+v"(bv[v]));
        }
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            __m512 ar = _mm512_set1_ps(a[r * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
    __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __mmask16 mk = v == nv - 1 ? last : (__mmask16)0xFFFF;
            float *c = C + r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(acc[r][v], al);
            if (!overwrite)
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mk, c));
            _mm512_mask_storeu_ps(c, mk, x);
        }
}
#endif

static void gemm_tile(float *C, int64_t ldc, const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb,
                      int M, int N, int K, float alpha, int overwrite) {
#ifdef __AVX512F__
    for (int n0 = 0; n0 < N; n0 += 64) {
        int nn = N - n0 < 64 ? N - n0 : 64, nv = (nn + 15) / 16;
        __mmask16 last = (__mmask16)(0xFFFFu >> (16 * nv - nn));
        for (int r0 = 0; r0 < M; r0 += 4) {
            int mr = M - r0 < 4 ? M - r0 : 4;
            float *c = C + r0 * ldc + n0;
            const float *a = A + r0 * ars, *b = B + n0;
            switch (mr * 8 + nv) {
#define CASE(R, V)                                                               \
    case (R) * 8 + (V):                                                          \
        micro(R, V, last, c, ldc, a, ars, aks, b, ldb, K, alpha, overwrite); \
        break;
                CASE(4, 4) CASE(4, 3) CASE(4, 2) CASE(4, 1) CASE(3, 4) CASE(3, 3) CASE(3, 2) CASE(3, 1)
                CASE(2, 4) CASE(2, 3) CASE(2, 2) CASE(2, 1) CASE(1, 4) CASE(1, 3) CASE(1, 2) CASE(1, 1)
#undef CASE
            }
        }
    }
#else
    for (int r = 0; r < M; r++)
        for (int n = 0; n < N; n++) {
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += A[r * ars + k * aks] * B[k * ldb + n];
            C[r * ldc + n] = overwrite ? alpha * acc : C[r * ldc + n] + alpha * acc;
        }
#endif
}

/* ---- exp and the vertical softmax steps on a transposed tile St [nk, QT] ---- */

#ifdef __AVX512F__
/* Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-7 polynomial, 2^n by scalef (~1 ulp). exp(-inf)
 * and anything below -104 gives 0. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

/* Online softmax over one key block: m (running max), l (running sum) per query column; St is
 * replaced by exp(St - m_new) and alpha = exp(m_old - m_new) is what the old O rows must be scaled
 * by. A column that has seen only -inf keeps m = -inf and uses 0 as its shift, so no inf - inf. */
static void softmax_block(float *St, int nk, float *m, float *l, float *alpha) {
#ifdef __AVX512F__
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int v = 0; v < QT; v += 16) {
        __m512 mo = _mm512_load_ps(m + v), mx = mo;
        for (int j = 0; j < nk; j++)
            mx = _mm512_max_ps(mx, _mm512_load_ps(St + j * QT + v));
        __m512 mu = _mm512_mask_mov_ps(mx, _mm512_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ), _mm512_setzero_ps());
        __m512 al = exp16(_mm512_sub_ps(mo, mu)), sum = _mm512_setzero_ps();
        for (int j = 0; j < nk; j++) {
            __m512 p = exp16(_mm512_sub_ps(_mm512_load_ps(St + j * QT + v), mu));
            _mm512_store_ps(St + j * QT + v, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_store_ps(l + v, _mm512_fmadd_ps(_mm512_load_ps(l + v), al, sum));
        _mm512_store_ps(m + v, mx);
        _mm512_store_ps(alpha + v, al);
    }
#else
    for (int i = 0; i < QT; i++) {
        float mx = m[i];
        for (int j = 0; j < nk; j++)
            mx = St[j * QT + i] > mx ? St[j * QT + i] : mx;
        float mu = mx == -INFINITY ? 0.0f : mx, sum = 0;
        for (int j = 0; j < nk; j++) {
            float p = expf(St[j * QT + i] - mu);
            St[j * QT + i] = p;
            sum += p;
        }
        alpha[i] = expf(m[i] - mu);
        l[i] = l[i] * alpha[i] + sum;
        m[i] = mx;
    }
#endif
}

/* Pt = exp(St - lse) in place (backward recompute of the probabilities). */
static void probs_from_lse(float *St, int nk, const float *lse) {
#ifdef __AVX512F__
    for (int v = 0; v < QT; v += 16) {
        __m512 ls = _mm512_load_ps(lse + v);
        for (int j = 0; j < nk; j++)
            _mm512_store_ps(St + j * QT + v, exp16(_mm512_sub_ps(_mm512_load_ps(St + j * QT + v), ls)));
    }
#else
    for (int j = 0; j < nk; j++)
        for (int i = 0; i < QT; i++)
            St[j * QT + i] = expf(St[j * QT + i] - lse[i]);
#endif
}

/* St[j, i] += mask(i, j) for the mq valid query columns. */
static void add_mask(float *St, int nk, int mq, const float *mk, int64_t sq, int64_t sk) {
    for (int j = 0; j < nk; j++) {
        const float *mr = mk + j * sk;
        float *s = St + j * QT;
        if (sq == 0) {
            for (int i = 0; i < mq; i++)
                s[i] += mr[0];
        } else {
            for (int i = 0; i < mq; i++)
                s[i] += mr[i * sq];
        }
    }
}

/* Qt[d, i] = scale * q_rows[i, d] for i < mq, zero-padded to QT columns. */
static void pack_t(float *Qt, const float *rows, int64_t ld, int mq, int D, float scale) {
    memset(Qt, 0, (size_t)D * QT * sizeof *Qt);
    for (int i = 0; i < mq; i++)
        for (int d = 0; d < D; d++)
            Qt[d * QT + i] = scale * rows[i * ld + d];
}

/* ---- bf16 tiles (vdpbf16ps: per 32-bit lane, acc += a.lo * b.lo + a.hi * b.hi) ----
 * Both operands hold pairs along the reduction dim: a broadcast pair (A[r, 2p], A[r, 2p+1]) meets
 * a vector of pairs (B[2p, n], B[2p+1, n]). Pairs are built from two f32 rows, rounded to nearest
 * even; the products accumulate in f32. */
#ifdef __AVX512BF16__
#define HAVE_BF16 1
/* dst[n] = bf16(a[n]) | bf16(b[n]) << 16 for n < N; b NULL means zeros. */
static void pack_pairs(uint32_t *dst, const float *a, const float *b, int N) {
    for (int n = 0; n < N; n += 16) {
        __mmask16 mk = N - n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
        __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, a + n)));
        __m512i hi = b ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, b + n)))
                       : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(dst + n, mk, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

/* One row of N floats to bf16, zero-padded to an even count (consecutive elements form the pairs). */
static void row_to_bf16(uint16_t *dst, const float *src, int N) {
    for (int n = 0; n < N; n += 16) {
        __mmask16 mk = N - n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
        __mmask16 ms = N - n >= 16 ? mk : (__mmask16)((1u << ((N - n + 1) & ~1)) - 1);
        _mm256_mask_storeu_epi16(dst + n, ms, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + n)));
    }
}

static inline __attribute__((always_inline)) void micro_bf(const int mr, const int nv, __mmask16 last, float *C,
                                                           int64_t ldc, const uint32_t *A, int64_t ars,
                                                           int64_t aks, const uint32_t *B, int64_t ldb, int K2,
                                                           int overwrite) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int k = 0; k < K2; k++) {
        const uint32_t *b = B + k * ldb, *a = A + k * aks;
        __m512i bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            bv[v] = _mm512_maskz_loadu_epi32(v == nv - 1 ? last : (__mmask16)0xFFFF, b + 16 * v);
            __asm__("" : "+v"(bv[v]));
        }
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            __m512i ar = _mm512_set1_epi32((int)a[r * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)ar, (__m512bh)bv[v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __mmask16 mk = v == nv - 1 ? last : (__mmask16)0xFFFF;
            float *c = C + r * ldc + 16 * v;
            __m512 x = overwrite ? acc[r][v] : _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(mk, c));
            _mm512_mask_storeu_ps(c, mk, x);
        }
}

/* C[r, n] (+)= sum_p A2[r*ars + p*aks] . B2[p*ldb + n] over K2 pairs. */
static void gemm_bf16(float *C, int64_t ldc, const uint32_t *A, int64_t ars, int64_t aks, const uint32_t *B,
                      int64_t ldb, int M, int N, int K2, int overwrite) {
    for (int n0 = 0; n0 < N; n0 += 64) {
        int nn = N - n0 < 64 ? N - n0 : 64, nv = (nn + 15) / 16;
        __mmask16 last = (__mmask16)(0xFFFFu >> (16 * nv - nn));
        for (int r0 = 0; r0 < M; r0 += 4) {
            int mr = M - r0 < 4 ? M - r0 : 4;
            float *c = C + r0 * ldc + n0;
            const uint32_t *a = A + r0 * ars, *b = B + n0;
            switch (mr * 8 + nv) {
#define CASE(R, V)                                                          \
    case (R) * 8 + (V):                                                     \
        micro_bf(R, V, last, c, ldc, a, ars, aks, b, ldb, K2, overwrite); \
        break;
                CASE(4, 4) CASE(4, 3) CASE(4, 2) CASE(4, 1) CASE(3, 4) CASE(3, 3) CASE(3, 2) CASE(3, 1)
                CASE(2, 4) CASE(2, 3) CASE(2, 2) CASE(2, 1) CASE(1, 4) CASE(1, 3) CASE(1, 2) CASE(1, 1)
#undef CASE
            }
        }
    }
}
#else
#define HAVE_BF16 0
#endif

/* ---- forward ---- */

static int use_bf16(const rb_attn_shape *s) { return HAVE_BF16 && s->bf16; }

size_t attention_forward_scratch(const rb_attn_shape *s) {
    size_t n = round16((size_t)s->D * QT) + (size_t)KB * QT + round16((size_t)QT * s->Dv) + 3 * QT;
    if (use_bf16(s)) { /* Q pairs [D/2, QT], P pairs [KB/2, QT], K rows [KB, D/2], V pairs [KB/2, Dv] */
        size_t D2 = ((size_t)s->D + 1) / 2;
        n += round16(D2 * QT) + (size_t)KB / 2 * QT + round16((size_t)KB * D2) + round16((size_t)KB / 2 * s->Dv);
    }
    return n;
}

static void forward_tile(float *out, float *lse, const float *q, const float *k, const float *v, const float *mask,
                         const rb_attn_shape *s, int b, int h, int i0, float *ws) {
    const int D = s->D, Dv = s->Dv, mq = s->Lq - i0 < QT ? s->Lq - i0 : QT;
    float *Qt = ws, *St = Qt + round16((size_t)D * QT), *O = St + KB * QT;
    float *m = O + round16((size_t)QT * Dv), *l = m + QT, *alpha = l + QT;
    const float *kb = k + b * s->k_sb + h * D, *vb = v + b * s->v_sb + h * Dv;
    const float *mb = mask ? mask + b * s->m_sb + h * s->m_sh + i0 * s->m_sq : NULL;
    pack_t(Qt, q + b * s->q_sb + i0 * s->q_sl + h * D, s->q_sl, mq, D, s->scale);
    for (int i = 0; i < QT; i++) {
        m[i] = -INFINITY;
        l[i] = 0;
    }
    memset(O, 0, (size_t)QT * Dv * sizeof *O);
#if HAVE_BF16
    const int bf = use_bf16(s), D2 = (D + 1) / 2;
    uint32_t *Q2 = (uint32_t *)(alpha + QT), *P2 = Q2 + round16((size_t)D2 * QT), *K2 = P2 + KB / 2 * QT;
    uint32_t *V2 = K2 + round16((size_t)KB * D2);
    if (bf)
        for (int p = 0; p < D2; p++)
            pack_pairs(Q2 + p * QT, Qt + 2 * p * QT, 2 * p + 1 < D ? Qt + (2 * p + 1) * QT : NULL, QT);
#endif
    for (int j0 = 0; j0 < s->Lk; j0 += KB) {
        int nk = s->Lk - j0 < KB ? s->Lk - j0 : KB;
#if HAVE_BF16
        if (bf) {
            for (int j = 0; j < nk; j++)
                row_to_bf16((uint16_t *)(K2 + j * D2), kb + (j0 + j) * s->k_sl, D);
            gemm_bf16(St, QT, K2, D2, 1, Q2, QT, nk, QT, D2, 1);
        } else
#endif
            gemm_tile(St, QT, kb + j0 * s->k_sl, s->k_sl, 1, Qt, QT, nk, QT, D, 1.0f, 1); /* St = K_blk Qt */
        if (mb)
            add_mask(St, nk, mq, mb + j0 * s->m_sk, s->m_sq, s->m_sk);
        softmax_block(St, nk, m, l, alpha);
        for (int i = 0; i < mq; i++)
            if (alpha[i] != 1.0f)
                for (int e = 0; e < Dv; e++)
                    O[i * Dv + e] *= alpha[i];
#if HAVE_BF16
        if (bf) {
            for (int p = 0; 2 * p < nk; p++) {
                int odd = 2 * p + 1 < nk;
                pack_pairs(P2 + p * QT, St + 2 * p * QT, odd ? St + (2 * p + 1) * QT : NULL, QT);
                pack_pairs(V2 + p * Dv, vb + (j0 + 2 * p) * s->v_sl, odd ? vb + (j0 + 2 * p + 1) * s->v_sl : NULL, Dv);
            }
            gemm_bf16(O, Dv, P2, 1, QT, V2, Dv, mq, Dv, (nk + 1) / 2, 0);
        } else
#endif
            gemm_tile(O, Dv, St, 1, QT, vb + j0 * s->v_sl, s->v_sl, mq, Dv, nk, 1.0f, 0); /* O += P V */
    }
    int64_t ld = (int64_t)s->H * Dv;
    float *ob = out + ((int64_t)b * s->Lq + i0) * ld + h * Dv;
    for (int i = 0; i < mq; i++) {
        float inv = 1.0f / l[i];
        for (int e = 0; e < Dv; e++)
            ob[i * ld + e] = O[i * Dv + e] * inv;
    }
    if (lse)
        for (int i = 0; i < mq; i++)
            lse[((int64_t)b * s->H + h) * s->Lq + i0 + i] = m[i] + logf(l[i]);
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const float *mask,
                       const rb_attn_shape *s, float *scratch, int nthreads) {
    const int tiles = (s->Lq + QT - 1) / QT;
    const int64_t units = (int64_t)s->B * s->H * tiles;
    const size_t per = attention_forward_scratch(s);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t u = 0; u < units; u++) {
        int t = (int)(u % tiles), bh = (int)(u / tiles);
        forward_tile(out, lse, q, k, v, mask, s, bh / s->H, bh % s->H, t * QT,
                     scratch + per * (size_t)omp_get_thread_num());
    }
}

/* ---- backward (FlashAttention-2, recompute P per tile) ----
 * A work unit is (b, h, chunk of key blocks): it owns the dK/dV rows of its keys and adds to them
 * directly. With one chunk per head it also owns the head's dQ; when there are fewer heads than
 * threads, the keys are split into chunks whose dQ contributions go to private buffers that are
 * summed in a fixed order afterwards (deterministic, no atomics). */

size_t attention_backward_scratch(const rb_attn_shape *s) {
    return round16((size_t)s->D * QT) + round16((size_t)s->Dv * QT) + 2 * (size_t)KB * QT + 2 * QT;
}

static int key_chunks(const rb_attn_shape *s, int nthreads) {
    int64_t bh = (int64_t)s->B * s->H, blocks = (s->Lk + KB - 1) / KB;
    int64_t n = bh >= nthreads ? 1 : (nthreads + bh - 1) / bh;
    return (int)(n < blocks ? n : blocks);
}

size_t attention_backward_dq_part(const rb_attn_shape *s, int nthreads) {
    int n = key_chunks(s, nthreads);
    return n > 1 ? (size_t)n * s->B * s->H * s->Lq * s->D : 0;
}

static void backward_head(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *mask, const float *lse, const float *delta,
                          const rb_attn_shape *s, int b, int h, int jb, int je, float *dqh, int64_t lddq,
                          float *ws) {
    const int D = s->D, Dv = s->Dv;
    const int64_t ldq = (int64_t)s->H * D, ldv = (int64_t)s->H * Dv, row = (int64_t)b * s->H + h;
    float *Qt = ws, *dOt = Qt + round16((size_t)D * QT), *P = dOt + round16((size_t)Dv * QT), *dS = P + KB * QT;
    float *lt = dS + KB * QT, *dt = lt + QT;
    const float *kb = k + b * s->k_sb + h * D, *vb = v + b * s->v_sb + h * Dv;
    float *dkb = dk ? dk + (int64_t)b * s->Lk * ldq + h * D : NULL;
    float *dvb = dv ? dv + (int64_t)b * s->Lk * ldv + h * Dv : NULL;
    for (int sb = jb; sb < je; sb += SB) {
        const int se = je - sb < SB ? je : sb + SB;
        for (int i0 = 0; i0 < s->Lq; i0 += QT) {
            const int mq = s->Lq - i0 < QT ? s->Lq - i0 : QT;
            const float *qrows = q + b * s->q_sb + i0 * s->q_sl + h * D;
            const float *dorows = dout + ((int64_t)b * s->Lq + i0) * ldv + h * Dv;
            const float *mb = mask ? mask + b * s->m_sb + h * s->m_sh + i0 * s->m_sq : NULL;
            pack_t(Qt, qrows, s->q_sl, mq, D, s->scale);
            pack_t(dOt, dorows, ldv, mq, Dv, 1.0f);
            for (int i = 0; i < QT; i++) {
                lt[i] = i < mq ? lse[row * s->Lq + i0 + i] : 0.0f;
                dt[i] = i < mq ? delta[row * s->Lq + i0 + i] : 0.0f;
            }
            for (int j0 = sb; j0 < se; j0 += KB) {
                const int nk = se - j0 < KB ? se - j0 : KB;
                gemm_tile(P, QT, kb + j0 * s->k_sl, s->k_sl, 1, Qt, QT, nk, QT, D, 1.0f, 1); /* St */
                if (mb)
                    add_mask(P, nk, mq, mb + j0 * s->m_sk, s->m_sq, s->m_sk);
                probs_from_lse(P, nk, lt); /* Pt [nk, QT] */
                if (dvb) /* dV += P^T dO */
                    gemm_tile(dvb + j0 * ldv, ldv, P, QT, 1, dorows, ldv, nk, Dv, mq, 1.0f, 0);
                gemm_tile(dS, QT, vb + j0 * s->v_sl, s->v_sl, 1, dOt, QT, nk, QT, Dv, 1.0f, 1); /* dPt = V dO^T */
                for (int j = 0; j < nk; j++) /* dS = P * (dP - rowsum(dO * O)) */
                    for (int i = 0; i < QT; i++)
                        dS[j * QT + i] = P[j * QT + i] * (dS[j * QT + i] - dt[i]);
                if (dkb) /* dK += scale dS^T Q */
                    gemm_tile(dkb + j0 * ldq, ldq, dS, QT, 1, qrows, s->q_sl, nk, D, mq, s->scale, 0);
                if (dqh) /* dQ += scale dS K */
                    gemm_tile(dqh + i0 * lddq, lddq, dS, 1, QT, kb + j0 * s->k_sl,
                              s->k_sl, mq, D, nk, s->scale, 0);
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *q,
                        const float *k, const float *v, const float *mask, const float *lse,
                        const rb_attn_shape *s, float *delta, float *dq_part, float *scratch, int nthreads) {
    const int64_t rows = (int64_t)s->B * s->Lq, ldv = (int64_t)s->H * s->Dv, ldq = (int64_t)s->H * s->D;
    const int nch = key_chunks(s, nthreads), blocks = (s->Lk + KB - 1) / KB;
    const size_t part = (size_t)s->Lq * s->D;
    if (nch > 1 && dq)
        memset(dq_part, 0, part * nch * s->B * s->H * sizeof *dq_part);
    const size_t per = attention_backward_scratch(s);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = r / s->Lq, i = r % s->Lq;
        for (int h = 0; h < s->H; h++) {
            const float *go = dout + r * ldv + h * s->Dv, *o = out + r * ldv + h * s->Dv;
            float acc = 0;
            for (int e = 0; e < s->Dv; e++)
                acc += go[e] * o[e];
            delta[(b * s->H + h) * s->Lq + i] = acc;
        }
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int u = 0; u < s->B * s->H * nch; u++) {
        int b = u / nch / s->H, h = u / nch % s->H, ch = u % nch;
        int jb = (int)((int64_t)ch * blocks / nch) * KB, je = (int)((int64_t)(ch + 1) * blocks / nch) * KB;
        float *dqh = !dq ? NULL : nch > 1 ? dq_part + part * (size_t)u : dq + (int64_t)b * s->Lq * ldq + h * s->D;
        backward_head(dq, dk, dv, dout, q, k, v, mask, lse, delta, s, b, h, jb, je < s->Lk ? je : s->Lk, dqh,
                      nch > 1 ? s->D : ldq, scratch + per * (size_t)omp_get_thread_num());
    }
    if (nch > 1 && dq) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t r = 0; r < rows; r++) {
            int64_t b = r / s->Lq, i = r % s->Lq;
            for (int h = 0; h < s->H; h++)
                for (int ch = 0; ch < nch; ch++) {
                    const float *src = dq_part + part * (size_t)((b * s->H + h) * nch + ch) + i * s->D;
                    float *dst = dq + r * ldq + h * s->D;
                    for (int d = 0; d < s->D; d++)
                        dst[d] += src[d];
                }
        }
    }
}

/* ---- tensor level ---- */

static int check_qkv(rb_ctx *c, const rb_tensor *t, const char *name) {
    char buf[64];
    if (t->dtype != RB_F32 || t->ndim != 3) {
        rb_ctx_error(c, RB_ERR_INVALID, "attention: %s must be f32 [B, L, H*D], got %s of %d dims %s", name,
                     rb_dtype_name(t->dtype), t->ndim, rb_shape_str(t, buf, sizeof buf));
        return 0;
    }
    if (t->shape[2] > 1 && t->stride[2] != 1) {
        rb_ctx_error(c, RB_ERR_INVALID, "attention: %s must be contiguous along its last dim (stride %lld)", name,
                     (long long)t->stride[2]);
        return 0;
    }
    if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[2] < 1 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX ||
        t->shape[2] > INT_MAX) {
        rb_ctx_error(c, RB_ERR_INVALID, "attention: %s has an empty or oversized shape %s", name,
                     rb_shape_str(t, buf, sizeof buf));
        return 0;
    }
    return 1;
}

/* Fills s from the tensors; returns 0 with the error recorded in c. */
static int make_shape(rb_ctx *c, rb_attn_shape *s, const rb_tensor *q, const rb_tensor *k, const rb_tensor *v,
                      int heads, const rb_tensor *mask, float scale) {
    char b1[64], b2[64], b3[64];
    if (!check_qkv(c, q, "q") || !check_qkv(c, k, "k") || !check_qkv(c, v, "v"))
        return 0;
    if (heads < 1 || q->shape[2] % heads || v->shape[2] % heads || k->shape[2] != q->shape[2] ||
        k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] || v->shape[1] != k->shape[1]) {
        rb_ctx_error(c, RB_ERR_INVALID, "attention: shapes q %s, k %s, v %s do not fit %d heads", rb_shape_str(q, b1, 64),
                     rb_shape_str(k, b2, 64), rb_shape_str(v, b3, 64), heads);
        return 0;
    }
    memset(s, 0, sizeof *s);
    s->B = (int)q->shape[0];
    s->H = heads;
    s->Lq = (int)q->shape[1];
    s->Lk = (int)k->shape[1];
    s->D = (int)(q->shape[2] / heads);
    s->Dv = (int)(v->shape[2] / heads);
    s->q_sb = q->stride[0], s->q_sl = q->stride[1];
    s->k_sb = k->stride[0], s->k_sl = k->stride[1];
    s->v_sb = v->stride[0], s->v_sl = v->stride[1];
    s->scale = scale != 0.0f ? scale : 1.0f / sqrtf((float)s->D);
    if (mask) {
        const int64_t full[4] = {s->B, s->H, s->Lq, s->Lk};
        int ok = mask->dtype == RB_F32 && mask->ndim == 4;
        for (int d = 0; ok && d < 4; d++)
            ok = mask->shape[d] == full[d] || mask->shape[d] == 1;
        if (!ok) {
            rb_ctx_error(c, RB_ERR_INVALID,
                         "attention: mask must be f32 with 4 dims each 1 or full of [%d, %d, %d, %d], got %s %s",
                         s->B, s->H, s->Lq, s->Lk, rb_dtype_name(mask->dtype), rb_shape_str(mask, b1, 64));
            return 0;
        }
        s->m_sb = mask->shape[0] == 1 ? 0 : mask->stride[0];
        s->m_sh = mask->shape[1] == 1 ? 0 : mask->stride[1];
        s->m_sq = mask->shape[2] == 1 ? 0 : mask->stride[2];
        s->m_sk = mask->shape[3] == 1 ? 0 : mask->stride[3];
    }
    return 1;
}

/* nthreads * per floats of scratch from the arena, or NULL with c->status set. */
static float *scratch_alloc(rb_ctx *c, size_t per, int nthreads) {
    size_t bytes;
    if (!rb_mul_size(per, (size_t)nthreads * sizeof(float), &bytes)) {
        rb_ctx_error(c, RB_ERR_OOM, "attention: scratch size overflows");
        return NULL;
    }
    float *p = rb_arena_alloc(c->arena, bytes);
    if (!p)
        rb_ctx_fail(c, RB_ERR_OOM);
    return p;
}

static rb_status attention_bw(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *q = e->in[0], *k = e->in[1], *v = e->in[2], *mask = e->in[3], *out = e->out, *lse = e->saved[0];
    rb_attn_shape s;
    if (!make_shape(c, &s, q, k, v, (int)e->i[0], mask, (float)e->f[0]))
        return c->status;
    rb_tensor *gq = rb_needs_grad(q) ? rb_grad_of(c, q) : NULL, *gk = rb_needs_grad(k) ? rb_grad_of(c, k) : NULL,
              *gv = rb_needs_grad(v) ? rb_grad_of(c, v) : NULL;
    if (c->status != RB_OK)
        return c->status;
    if (!gq && !gk && !gv)
        return RB_OK; /* only the mask was marked: it gets no gradient */
    size_t mark = rb_arena_mark(c->arena);
    int nt = omp_get_max_threads();
    float *delta = scratch_alloc(c, (size_t)s.B * s.H * s.Lq, 1);
    size_t np = gq ? attention_backward_dq_part(&s, nt) : 0;
    float *dq_part = delta && np ? scratch_alloc(c, np, 1) : NULL;
    float *ws = delta && (dq_part || !np) ? scratch_alloc(c, attention_backward_scratch(&s), nt) : NULL;
    if (ws)
        attention_backward(gq ? gq->data : NULL, gk ? gk->data : NULL, gv ? gv->data : NULL, out->grad->data,
                           out->data, q->data, k->data, v->data, mask ? mask->data : NULL, lse->data, &s, delta,
                           dq_part, ws, nt);
    rb_arena_reset(c->arena, mark);
    return c->status;
}

rb_tensor *rb_attention(rb_ctx *c, rb_tensor *q, rb_tensor *k, rb_tensor *v, int heads, rb_tensor *mask,
                        float scale) {
    if (c->status != RB_OK)
        return NULL;
    if (!q || !k || !v)
        return rb_ctx_error(c, RB_ERR_INVALID, "attention: q, k and v are required");
    rb_attn_shape s;
    if (!make_shape(c, &s, q, k, v, heads, mask, scale))
        return NULL;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){s.B, s.Lq, (int64_t)s.H * s.Dv});
    int rec = c->tape && (rb_needs_grad(q) || rb_needs_grad(k) || rb_needs_grad(v) || rb_needs_grad(mask));
    rb_tensor *lse = rec ? rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){s.B, s.H, s.Lq}) : NULL;
    if (!out || (rec && !lse))
        return NULL;
    /* bf16 tiles for inference only: the f32 backward must see the P it recomputes (also when this is the
     * untaped forward of a block that backward recomputes) */
    s.bf16 = c->matmul_dtype == RB_BF16 && !rec && !c->in_checkpoint;
    size_t mark = rb_arena_mark(c->arena);
    int nt = omp_get_max_threads();
    float *ws = scratch_alloc(c, attention_forward_scratch(&s), nt);
    if (!ws)
        return NULL;
    attention_forward(out->data, lse ? lse->data : NULL, q->data, k->data, v->data, mask ? mask->data : NULL, &s,
                      ws, nt);
    rb_arena_reset(c->arena, mark);
    rb_tape_entry *e = rb_tape_record(c, "attention", attention_bw, out, 4, (rb_tensor *[]){q, k, v, mask});
    if (e) {
        e->saved[0] = lse;
        e->f[0] = s.scale;
        e->i[0] = heads;
    }
    return c->status == RB_OK ? out : NULL;
}

