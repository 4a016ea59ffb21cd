/* A minimal torch.save writer (zip format of torch 1.13: pickle protocol 2, stored records whose data
 * starts 64-byte aligned, `<prefix>/data.pkl`, `<prefix>/data/<key>`, `<prefix>/version` = "3\n"),
 * enough for the files relbooth reads back: a dict whose values are OrderedDicts of tensors (a
 * state_dict) or single tensors / nn.Parameters — the structure of MS-Diffusion's ms_adapter.bin.
 * Tensors are written contiguous in their dtype (f32 FloatStorage, bf16 BFloat16Storage, f16
 * HalfStorage), one storage each. */
#ifndef RB_IO_TORCHFILE_WRITE_H
#define RB_IO_TORCHFILE_WRITE_H

#include "core/tensor.h"

typedef struct rb_torch_item {
    const char *group;   /* top-level key of the OrderedDict it goes in, or NULL: a top-level value */
    const char *key;     /* key inside the group, or the top-level key */
    const rb_tensor *t;  /* f32, bf16 or f16 (any strides) */
    int parameter;       /* top-level only: pickled as nn.Parameter (torch._utils._rebuild_parameter) */
} rb_torch_item;

/* Items of one group must be adjacent; order is kept. `prefix` names the zip records ("ms_adapter").
 * Written to a temporary file and renamed over `path`. */
rb_status rb_torch_write(const char *path, const char *prefix, int n, const rb_torch_item *items);

#endif
