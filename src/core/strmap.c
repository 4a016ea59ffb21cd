#include "strmap.h"

#include <string.h>

#include "mem.h"

static uint32_t hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

rb_status rb_strmap_init(rb_strmap *m, uint32_t expected) {
    memset(m, 0, sizeof *m);
    uint32_t cap = 16;
    while (cap < expected * 2u && cap < (1u << 30))
        cap <<= 1;
    m->cap = cap;
    m->slots = rb_calloc((size_t)cap * sizeof *m->slots, "string map");
    m->keys = rb_calloc((size_t)cap / 2 * sizeof *m->keys, "string map");
    m->key_lens = rb_calloc((size_t)cap / 2 * sizeof *m->key_lens, "string map");
    m->values = rb_calloc((size_t)cap / 2 * sizeof *m->values, "string map");
    if (!m->slots || !m->keys || !m->key_lens || !m->values) {
        rb_strmap_free(m);
        return RB_ERR_OOM;
    }
    return RB_OK;
}

void rb_strmap_free(rb_strmap *m) {
    if (m->keys)
        for (uint32_t i = 0; i < m->n; i++)
            rb_free(m->keys[i]);
    rb_free(m->slots);
    rb_free(m->keys);
    rb_free(m->key_lens);
    rb_free(m->values);
    memset(m, 0, sizeof *m);
}

static uint32_t *find(const rb_strmap *m, const char *key, size_t len) {
    uint32_t mask = m->cap - 1, i = hash(key, len) & mask;
    for (;;) {
        uint32_t s = m->slots[i];
        if (!s || (m->key_lens[s - 1] == len && memcmp(m->keys[s - 1], key, len) == 0))
            return &m->slots[i];
        i = (i + 1) & mask;
    }
}

static rb_status grow(rb_strmap *m) {
    rb_strmap big;
    RB_TRY(rb_strmap_init(&big, m->cap));
    for (uint32_t i = 0; i < m->n; i++) {
        *find(&big, m->keys[i], m->key_lens[i]) = i + 1;
        big.keys[i] = m->keys[i];
        big.key_lens[i] = m->key_lens[i];
        big.values[i] = m->values[i];
    }
    big.n = m->n;
    rb_free(m->slots);
    rb_free(m->keys);
    rb_free(m->key_lens);
    rb_free(m->values);
    *m = big;
    return RB_OK;
}

rb_status rb_strmap_put(rb_strmap *m, const char *key, size_t len, int32_t value) {
    uint32_t *slot = find(m, key, len);
    if (*slot) {
        m->values[*slot - 1] = value;
        return RB_OK;
    }
    if (m->n + 1 > m->cap / 2) {
        RB_TRY(grow(m));
        slot = find(m, key, len);
    }
    char *k = rb_alloc(len + 1, "string map key");
    if (!k)
        return RB_ERR_OOM;
    memcpy(k, key, len);
    k[len] = 0;
    m->keys[m->n] = k;
    m->key_lens[m->n] = len;
    m->values[m->n] = value;
    *slot = ++m->n;
    return RB_OK;
}

int rb_strmap_get(const rb_strmap *m, const char *key, size_t len, int32_t *value) {
    if (!m->cap)
        return 0;
    uint32_t s = *find(m, key, len);
    if (!s)
        return 0;
    *value = m->values[s - 1];
    return 1;
}
