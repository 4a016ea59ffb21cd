/* Restricted pickle interpreter for PyTorch checkpoints (protocol 2..5 opcodes that torch.save
 * emits). It builds plain values (None, bool, int, float, str, tuple, list, dict) and the few
 * torch objects a checkpoint is made of (storages from persistent ids, tensors from
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter, collections.OrderedDict). Any other
 * GLOBAL is refused with an error naming it; nothing is ever "called" except these builders.
 * All values live in a pool freed at once. */
#ifndef RB_IO_PICKLE_H
#define RB_IO_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"

typedef enum {
    RB_PK_NONE, RB_PK_BOOL, RB_PK_INT, RB_PK_FLOAT, RB_PK_STR, RB_PK_TUPLE, RB_PK_LIST, RB_PK_DICT,
    RB_PK_GLOBAL,  /* one of the allowed callables (g says which) */
    RB_PK_STORAGE, /* persistent id ('storage', <Type>Storage, key, location, numel[, None]) */
    RB_PK_TENSOR,  /* a strided view into a storage; offsets checked later against its bytes */
    RB_PK_MARK,    /* internal */
} rb_pk_kind;

typedef enum {
    RB_PKG_ORDERED_DICT, RB_PKG_REBUILD_TENSOR_V2, RB_PKG_REBUILD_PARAMETER, RB_PKG_STORAGE_TYPE
} rb_pk_global;

typedef struct rb_pk_value {
    rb_pk_kind kind;
    int64_t i;  /* BOOL, INT; STORAGE: numel */
    double f;   /* FLOAT */
    char *s;    /* STR; STORAGE: key (NUL-terminated, length len) */
    size_t len;
    struct rb_pk_value **items; /* TUPLE, LIST; DICT: key0, value0, key1, value1, ... */
    size_t n, cap;
    rb_pk_global g; /* GLOBAL */
    rb_dtype dtype; /* GLOBAL of a storage type, STORAGE, TENSOR */
    /* TENSOR */
    struct rb_pk_value *storage;
    int64_t offset;
    int ndim;
    int64_t shape[RB_MAX_DIMS], stride[RB_MAX_DIMS];
    int is_param;
} rb_pk_value;

typedef struct rb_pk_pool {
    rb_pk_value **nodes;
    size_t n, cap;
} rb_pk_pool;

/* Runs one pickle from buf[0..n) (stops at STOP); *used = bytes consumed. `what` names the
 * source in messages ("model.pt: data.pkl"). Values are allocated in pool. */
rb_status rb_pickle_load(rb_pk_pool *pool, const uint8_t *buf, size_t n, const char *what, rb_pk_value **out,
                         size_t *used);
void rb_pk_pool_free(rb_pk_pool *pool);

/* Dict lookup by string key (NULL if absent or not a dict). */
rb_pk_value *rb_pk_dict_get(const rb_pk_value *d, const char *key);

#endif
