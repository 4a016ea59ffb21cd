/* Raw kernels behind rb_upsample_nearest2x, rb_interpolate_bicubic and rb_window_mean_pool (ops.h).
 * All images are contiguous f32 [NC, H, W] planes (N and C folded into one count `planes`). */
#ifndef RB_OPS_RESAMPLE_H
#define RB_OPS_RESAMPLE_H

#include <stdint.h>

/* out [planes, 2H, 2W] = inp [planes, H, W] repeated 2x2 (F.interpolate(scale_factor=2, mode="nearest")).
 * out is written (=). */
void upsample_nearest2x_forward(float *out, const float *inp, int64_t planes, int64_t H, int64_t W);
/* dinp [planes, H, W] += sum of each 2x2 block of dout [planes, 2H, 2W] (accumulated, +=). */
void upsample_nearest2x_backward(float *dinp, const float *dout, int64_t planes, int64_t H, int64_t W);

/* Per-axis taps of PyTorch's upsample_bicubic2d (align_corners=False): for each output index o,
 * 4 input indices idx[4o..4o+3] clamped to [0, in-1] and their weights w[4o..4o+3] (cubic
 * convolution, A = -0.75), computed in f32 as torch does for f32 inputs. */
void bicubic_taps(int64_t *idx, float *w, int64_t in, int64_t out);
/* out [planes, Ho, Wo] (written, =) from inp [planes, Hi, Wi] with the taps of each axis (from
 * bicubic_taps(iy, wy, Hi, Ho) and bicubic_taps(ix, wx, Wi, Wo)). */
void interpolate_bicubic_forward(float *out, const float *inp, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho,
                                 int64_t Wo, const int64_t *iy, const float *wy, const int64_t *ix, const float *wx);
/* dinp [planes, Hi, Wi] += the transpose of the forward applied to dout [planes, Ho, Wo] (accumulated, +=). */
void interpolate_bicubic_backward(float *dinp, const float *dout, int64_t planes, int64_t Hi, int64_t Wi, int64_t Ho,
                                  int64_t Wo, const int64_t *iy, const float *wy, const int64_t *ix, const float *wx);

/* out [planes, H/kh, W/kw] = mean of each kh x kw window of inp [planes, H, W] (written, =);
 * H % kh == 0 and W % kw == 0. */
void window_mean_pool_forward(float *out, const float *inp, int64_t planes, int64_t H, int64_t W, int kh, int kw);
/* dinp [planes, H, W] += dout / (kh*kw) spread over each window (accumulated, +=). */
void window_mean_pool_backward(float *dinp, const float *dout, int64_t planes, int64_t H, int64_t W, int kh, int kw);

#endif
