/* A checkpoint opened for a model (safetensors, or a PyTorch zip/legacy file read by the restricted
 * unpickler, told apart by content): typed, shape-checked access to its tensors by name, with a
 * record of which keys were used so that loaders can report the rest. Errors are sticky (the first
 * one is kept and later gets return NULL), so a loader reads like a list of its parameters and checks
 * once at the end. */
#ifndef RB_MODELS_WEIGHTS_H
#define RB_MODELS_WEIGHTS_H

#include "core/strmap.h"
#include "io/safetensors.h"
#include "io/torchfile.h"

typedef struct rb_weights {
    const char *path;
    rb_safetensors st;    /* one of st / torch is open */
    rb_torchfile torch;
    int is_torch;
    int n;                /* tensors of the file, in file order */
    const char **names;
    const rb_tensor **tensors;
    rb_strmap index;      /* name -> entry */
    unsigned char *used;  /* per entry */
    void **owned;         /* one block per rb_weights_get: the returned header (stable address) and its copy */
    int n_owned, cap_owned;
    rb_status status;
} rb_weights;

rb_status rb_weights_open(rb_weights *w, const char *path);
void rb_weights_close(rb_weights *w);

/* The tensor `name` (printf-style), which must have `ndim` dims equal to `shape` (an entry of -1
 * accepts any size). f32: 1 converts f16/bf16 to an owned f32 copy (norm gains, biases, embeddings);
 * 0 returns the mapped tensor in its stored dtype (matrices for linear/conv). NULL on error. */
rb_tensor *rb_weights_get(rb_weights *w, int f32, int ndim, const int64_t *shape, const char *fmt, ...)
    RB_PRINTF(5, 6);
/* Like rb_weights_get but a missing tensor is not an error (returns NULL, status unchanged). */
rb_tensor *rb_weights_opt(rb_weights *w, int f32, int ndim, const int64_t *shape, const char *fmt, ...)
    RB_PRINTF(5, 6);
int rb_weights_has(const rb_weights *w, const char *name);

/* Number of tensors never requested; lists up to `max_print` of them to the log (stderr). */
int rb_weights_unused(const rb_weights *w, int max_print);

#endif
