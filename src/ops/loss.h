/* Similarity and losses: raw kernels on plain f32 pointers (tensor-level wrappers in ops.h).
 * Forward kernels write (=) their outputs; backward kernels accumulate (+=) into the input
 * gradients (NULL where not wanted). g is the upstream gradient of a scalar loss. */
#ifndef RB_OPS_LOSS_H
#define RB_OPS_LOSS_H

#include <stdint.h>

/* F.normalize(x, p=2, dim=-1, eps): out = x / max(||x||, eps) per row; norm [rows] = ||x|| */
void rb_l2_normalize_forward(float *out, float *norm, const float *inp, int64_t rows, int64_t C, float eps);
/* ||x|| >= eps: dx += (dy - y sum(dy y)) / ||x||; else (the clamp is active) dx += dy / eps */
void rb_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norm, int64_t rows,
                              int64_t C, float eps);

/* F.cosine_similarity(a, b, dim=-1, eps) as in torch 1.13+: with n = max(||.||, eps),
 * out = sum(a b) / (na nb); na, nb [rows] keep the clamped norms. */
void rb_cosine_forward(float *out, float *na, float *nb, const float *a, const float *b, int64_t rows, int64_t C,
                       float eps);
/* da += dout (b / (na nb) - out a / na^2), db likewise. This is torch's gradient: it treats the
 * clamped norm as the norm (so it differs from the true derivative where a norm is below eps). */
void rb_cosine_backward(float *da, float *db, const float *dout, const float *a, const float *b, const float *out,
                        const float *na, const float *nb, int64_t rows, int64_t C);

/* mean((a - b)^2) over n elements */
double rb_mse_forward(const float *a, const float *b, int64_t n);
/* da += g 2 (a - b) / n, db -= the same */
void rb_mse_backward(float *da, float *db, float g, const float *a, const float *b, int64_t n);

/* logits [N, C], target [N] in [0, C) (checked by the caller): returns mean over rows of
 * logsumexp(logits[n]) - logits[n, target[n]]; lse [N] keeps the log-sum-exps for backward. */
double rb_cross_entropy_forward(float *lse, const float *logits, const int64_t *target, int64_t N, int64_t C);
/* dlogits += g / N (softmax(logits) - onehot(target)) */
void rb_cross_entropy_backward(float *dlogits, float g, const float *logits, const float *lse, const int64_t *target,
                               int64_t N, int64_t C);

#endif
