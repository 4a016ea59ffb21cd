/* String -> int32 hash map (open addressing, FNV-1a). Keys are copied into one arena-like block. */
#ifndef RB_CORE_STRMAP_H
#define RB_CORE_STRMAP_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct rb_strmap {
    uint32_t cap, n;   /* cap is a power of two */
    uint32_t *slots;   /* index + 1 into keys/values, 0 = empty */
    char **keys;
    size_t *key_lens;
    int32_t *values;
} rb_strmap;

rb_status rb_strmap_init(rb_strmap *m, uint32_t expected);
void rb_strmap_free(rb_strmap *m);
/* Inserts or overwrites. */
rb_status rb_strmap_put(rb_strmap *m, const char *key, size_t len, int32_t value);
/* Returns 1 and sets *value when present. */
int rb_strmap_get(const rb_strmap *m, const char *key, size_t len, int32_t *value);

#endif
