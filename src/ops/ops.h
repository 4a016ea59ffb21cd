/* Tensor-level ops: each takes a context, returns a new contiguous f32 output from c->arena (or a
 * view where stated), records itself on the tape when training, and returns NULL on error with
 * c->status and rb_last_error set. Inputs are f32 unless stated; weights of linear/conv may be
 * f32, bf16 or f16. Shapes are PyTorch's. The raw kernels behind them (forward and backward on
 * plain pointers) are declared in the per-family headers next to this one. */
#ifndef RB_OPS_OPS_H
#define RB_OPS_OPS_H

#include "ctx.h"
#include "tape.h"

/* ---- matrix products and convolution (oneDNN; src/ops/linear.c, conv.c) ---- */
/* x [..., K], w [N, K], b [N] or NULL -> [..., N]   (y = x w^T + b) */
rb_tensor *rb_linear(rb_ctx *c, rb_tensor *x, rb_tensor *w, rb_tensor *b);
/* a [B.., M, K] x b [B.., K, N] (or [B.., N, K] with transpose_b) -> [B.., M, N]; batch dims equal or 1 */
rb_tensor *rb_matmul(rb_ctx *c, rb_tensor *a, rb_tensor *b, int transpose_b);
/* x [N, C, H, W], w [O, C, kh, kw], b [O] or NULL -> [N, O, Ho, Wo] */
rb_tensor *rb_conv2d(rb_ctx *c, rb_tensor *x, rb_tensor *w, rb_tensor *b, int stride_h, int stride_w, int pad_h,
                     int pad_w);

/* ---- normalisation (src/ops/norm.c) ---- */
/* x [N, C, *], weight/bias [C] or NULL */
rb_tensor *rb_group_norm(rb_ctx *c, rb_tensor *x, int groups, rb_tensor *weight, rb_tensor *bias, float eps);
/* over the last dim: x [..., C], weight/bias [C] or NULL */
rb_tensor *rb_layer_norm(rb_ctx *c, rb_tensor *x, rb_tensor *weight, rb_tensor *bias, float eps);
/* softmax over the last dim */
rb_tensor *rb_softmax(rb_ctx *c, rb_tensor *x);

/* ---- attention (src/ops/attention.c) ---- */
/* q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv] -> [B, Lq, H*Dv]; heads H; mask additive,
 * broadcastable to [B, H, Lq, Lk] (a 4-d tensor whose dims are full or 1) or NULL; scale 0 means
 * 1/sqrt(D). Memory-efficient: only a tile of the score matrix exists at any time. */
rb_tensor *rb_attention(rb_ctx *c, rb_tensor *q, rb_tensor *k, rb_tensor *v, int heads, rb_tensor *mask,
                        float scale);

/* ---- activations (src/ops/activation.c) ---- */
rb_tensor *rb_gelu(rb_ctx *c, rb_tensor *x, int tanh_approx);
rb_tensor *rb_quick_gelu(rb_ctx *c, rb_tensor *x); /* x * sigmoid(1.702 x) */
rb_tensor *rb_silu(rb_ctx *c, rb_tensor *x);
/* x [..., 2N] -> [..., N]: a, g = chunk(x, 2, -1); a * gelu(g) (diffusers GEGLU after its projection) */
rb_tensor *rb_geglu(rb_ctx *c, rb_tensor *x);

/* ---- elementwise with NumPy broadcasting (src/ops/elementwise.c) ---- */
rb_tensor *rb_add(rb_ctx *c, rb_tensor *a, rb_tensor *b);
rb_tensor *rb_sub(rb_ctx *c, rb_tensor *a, rb_tensor *b);
rb_tensor *rb_mul(rb_ctx *c, rb_tensor *a, rb_tensor *b);
rb_tensor *rb_scale(rb_ctx *c, rb_tensor *x, float s); /* x * s */
rb_tensor *rb_sum(rb_ctx *c, rb_tensor *x);            /* all elements -> [] */
rb_tensor *rb_mean(rb_ctx *c, rb_tensor *x);           /* all elements -> [] */

/* ---- shape (src/ops/shape.c); outputs are contiguous copies unless stated ---- */
rb_tensor *rb_concat(rb_ctx *c, rb_tensor *const *xs, int n, int dim);
/* splits x along dim into n pieces of the given sizes (sum = x->shape[dim]); returns RB_OK or error */
rb_status rb_split(rb_ctx *c, rb_tensor *x, int dim, const int64_t *sizes, int n, rb_tensor **out);
rb_tensor *rb_slice(rb_ctx *c, rb_tensor *x, int dim, int64_t start, int64_t end);
rb_tensor *rb_permute(rb_ctx *c, rb_tensor *x, const int *perm);
/* a view when x is contiguous (gradient flows through), else a copy; one -1 allowed */
rb_tensor *rb_reshape(rb_ctx *c, rb_tensor *x, int ndim, const int64_t *shape);
rb_tensor *rb_contiguous(rb_ctx *c, rb_tensor *x);

/* ---- resampling and pooling (src/ops/resample.c) ---- */
rb_tensor *rb_upsample_nearest2x(rb_ctx *c, rb_tensor *x); /* [N, C, H, W] -> [N, C, 2H, 2W] */
/* torch.nn.functional.interpolate(mode="bicubic", align_corners=False), A = -0.75, no antialias */
rb_tensor *rb_interpolate_bicubic(rb_ctx *c, rb_tensor *x, int64_t out_h, int64_t out_w);
/* mean over non-overlapping kh x kw windows (avg_pool2d with stride = kernel): [N,C,H,W] -> [N,C,H/kh,W/kw] */
rb_tensor *rb_window_mean_pool(rb_ctx *c, rb_tensor *x, int kh, int kw);

/* ---- indexing (src/ops/gather.c) ---- */
/* table [V, C], ids i64/i32 [...] -> [..., C]; an id outside [0, V) is an error */
rb_tensor *rb_embedding(rb_ctx *c, rb_tensor *table, rb_tensor *ids);
/* torch.gather(x, dim, index): index i64/i32 with x's ndim; out has index's shape */
rb_tensor *rb_gather(rb_ctx *c, rb_tensor *x, int dim, rb_tensor *index);

/* ---- similarity and losses (src/ops/loss.c) ---- */
rb_tensor *rb_l2_normalize(rb_ctx *c, rb_tensor *x, float eps);               /* over the last dim */
rb_tensor *rb_cosine_similarity(rb_ctx *c, rb_tensor *a, rb_tensor *b, float eps); /* last dim -> [...] */
rb_tensor *rb_mse(rb_ctx *c, rb_tensor *a, rb_tensor *b);                        /* mean -> [] */
/* logits [N, C], target i64 [N] -> mean of -log_softmax(logits)[n, target[n]] -> [] */
rb_tensor *rb_cross_entropy(rb_ctx *c, rb_tensor *logits, rb_tensor *target);

#endif
