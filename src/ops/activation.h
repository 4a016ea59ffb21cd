/* Activations: raw kernels on plain f32 pointers (tensor-level wrappers in ops.h). Forward kernels
 * write their output (=); backward kernels accumulate into the input gradient (+=). */
#ifndef RB_OPS_ACTIVATION_H
#define RB_OPS_ACTIVATION_H

#include <stdint.h>

/* torch.nn.functional.gelu: exact 0.5 x (1 + erf(x / sqrt 2)), or with tanh_approx
 * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approximate="tanh"). */
void rb_gelu_forward(float *out, const float *inp, int64_t n, int tanh_approx);
void rb_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int tanh_approx); /* += */

/* x sigmoid(1.702 x) (CLIP's QuickGELU) */
void rb_quick_gelu_forward(float *out, const float *inp, int64_t n);
void rb_quick_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n); /* += */

/* x sigmoid(x) */
void rb_silu_forward(float *out, const float *inp, int64_t n);
void rb_silu_backward(float *dinp, const float *dout, const float *inp, int64_t n); /* += */

/* diffusers GEGLU after its projection: inp [rows, 2N] -> out [rows, N],
 * out = inp[:, :N] * gelu_erf(inp[:, N:]) */
void rb_geglu_forward(float *out, const float *inp, int64_t rows, int64_t N);
void rb_geglu_backward(float *dinp, const float *dout, const float *inp, int64_t rows, int64_t N); /* += */

#endif
