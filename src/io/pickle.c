/* Restricted pickle VM. It never imports or calls anything: GLOBAL/STACK_GLOBAL only resolve to
 * a fixed list of builders (tensor, parameter, OrderedDict, storage types) and REDUCE only runs
 * those builders on checked arguments. Bounds: every read is checked against the remaining bytes,
 * the stack cannot pop below the current MARK, memo indices are bounded by the pickle length, and
 * the number of values by RB_PK_MAX_NODES (so a hostile pickle cannot ask for unbounded memory). */
#include "pickle.h"

#include <stdlib.h>
#include <string.h>

#define RB_PK_MAX_NODES (1u << 22)

typedef struct vm {
    rb_pk_pool *pool;
    const uint8_t *buf;
    size_t n, pos, op_pos;
    const char *what;
    rb_pk_value **stack;
    size_t sp, scap;
    size_t *marks;
    size_t nmarks, mcap;
    rb_pk_value **memo;
    size_t memo_cap, memo_count;
} vm;

static rb_status fail(vm *m, rb_status s, const char *msg) {
    return rb_error(s, "%s: pickle byte %zu: %s", m->what, m->op_pos, msg);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 1;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return 0;
    *p = q;
    *cap = c;
    return 1;
}

static rb_pk_value *node(vm *m, rb_pk_kind k) {
    rb_pk_pool *pl = m->pool;
    if (pl->n >= RB_PK_MAX_NODES) {
        rb_error(RB_ERR_FORMAT, "%s: pickle builds more than %u values", m->what, RB_PK_MAX_NODES);
        return NULL;
    }
    if (!grow((void **)&pl->nodes, &pl->cap, pl->n + 1, sizeof *pl->nodes)) {
        rb_error(RB_ERR_OOM, "%s: out of memory in pickle", m->what);
        return NULL;
    }
    rb_pk_value *v = calloc(1, sizeof *v);
    if (!v) {
        rb_error(RB_ERR_OOM, "%s: out of memory in pickle", m->what);
        return NULL;
    }
    v->kind = k;
    pl->nodes[pl->n++] = v;
    return v;
}

static int add_item(rb_pk_value *c, rb_pk_value *x) {
    if (!grow((void **)&c->items, &c->cap, c->n + 1, sizeof *c->items))
        return 0;
    c->items[c->n++] = x;
    return 1;
}

void rb_pk_pool_free(rb_pk_pool *pool) {
    for (size_t i = 0; i < pool->n; i++) {
        free(pool->nodes[i]->items);
        free(pool->nodes[i]->s);
        free(pool->nodes[i]);
    }
    free(pool->nodes);
    memset(pool, 0, sizeof *pool);
}

rb_pk_value *rb_pk_dict_get(const rb_pk_value *d, const char *key) {
    if (!d || d->kind != RB_PK_DICT)
        return NULL;
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->items[i]->kind == RB_PK_STR && !strcmp(d->items[i]->s, key))
            return d->items[i + 1];
    return NULL;
}

/* ---- stack ---- */

static size_t floor_of(vm *m) { return m->nmarks ? m->marks[m->nmarks - 1] : 0; }

static rb_status push(vm *m, rb_pk_value *v) {
    if (!v)
        return RB_ERR_OOM; /* message already set by node() */
    if (!grow((void **)&m->stack, &m->scap, m->sp + 1, sizeof *m->stack))
        return rb_error(RB_ERR_OOM, "%s: out of memory in pickle", m->what);
    m->stack[m->sp++] = v;
    return RB_OK;
}

static rb_pk_value *pop(vm *m) { return m->sp > floor_of(m) ? m->stack[--m->sp] : NULL; }
static rb_pk_value *top(vm *m) { return m->sp > floor_of(m) ? m->stack[m->sp - 1] : NULL; }

static int pop_mark(vm *m, size_t *start) {
    if (!m->nmarks)
        return 0;
    *start = m->marks[--m->nmarks];
    return 1;
}

/* ---- reading ---- */

static int need(vm *m, size_t k) { return m->n - m->pos >= k; }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static rb_status push_str(vm *m, size_t len) {
    if (!need(m, len))
        return fail(m, RB_ERR_FORMAT, "string runs past the end of the pickle");
    rb_pk_value *v = node(m, RB_PK_STR);
    if (!v)
        return RB_ERR_OOM;
    v->s = malloc(len + 1);
    if (!v->s)
        return rb_error(RB_ERR_OOM, "%s: out of memory for a %zu-byte string", m->what, len);
    memcpy(v->s, m->buf + m->pos, len);
    v->s[len] = 0;
    v->len = len;
    m->pos += len;
    return push(m, v);
}

static rb_status push_int(vm *m, int64_t x) {
    rb_pk_value *v = node(m, RB_PK_INT);
    if (v)
        v->i = x;
    return push(m, v);
}

/* ---- globals ---- */

static const struct {
    const char *name;
    rb_dtype dtype;
} storage_types[] = {
    {"FloatStorage", RB_F32}, {"HalfStorage", RB_F16}, {"BFloat16Storage", RB_BF16}, {"DoubleStorage", RB_F64},
    {"LongStorage", RB_I64},  {"IntStorage", RB_I32},  {"ShortStorage", RB_I16},     {"CharStorage", RB_I8},
    {"ByteStorage", RB_U8},   {"BoolStorage", RB_BOOL},
};

static void printable(char *dst, size_t cap, const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        dst[k++] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    dst[k] = 0;
}

static rb_status push_global(vm *m, const char *mod, size_t ml, const char *name, size_t nl) {
    rb_pk_value *v = NULL;
#define IS(s, l, lit) ((l) == sizeof(lit) - 1 && !memcmp((s), (lit), (l)))
    if (IS(mod, ml, "collections") && IS(name, nl, "OrderedDict")) {
        if ((v = node(m, RB_PK_GLOBAL)))
            v->g = RB_PKG_ORDERED_DICT;
    } else if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_tensor_v2")) {
        if ((v = node(m, RB_PK_GLOBAL)))
            v->g = RB_PKG_REBUILD_TENSOR_V2;
    } else if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_parameter")) {
        if ((v = node(m, RB_PK_GLOBAL)))
            v->g = RB_PKG_REBUILD_PARAMETER;
    } else if (IS(mod, ml, "torch")) {
        for (size_t i = 0; i < sizeof storage_types / sizeof *storage_types; i++)
            if (strlen(storage_types[i].name) == nl && !memcmp(name, storage_types[i].name, nl)) {
                if ((v = node(m, RB_PK_GLOBAL))) {
                    v->g = RB_PKG_STORAGE_TYPE;
                    v->dtype = storage_types[i].dtype;
                }
                return push(m, v);
            }
    }
#undef IS
    if (v)
        return push(m, v);
    if (m->pool->n >= RB_PK_MAX_NODES)
        return RB_ERR_FORMAT;
    char a[128], b[128];
    printable(a, sizeof a, mod, ml);
    printable(b, sizeof b, name, nl);
    return rb_error(RB_ERR_FORMAT,
                    "%s: pickle byte %zu: refusing global '%s.%s' (only torch tensors, storages and plain "
                    "containers are allowed)",
                    m->what, m->op_pos, a, b);
}

static rb_status op_global(vm *m) {
    /* "module\nname\n" */
    const char *s[2];
    size_t l[2];
    for (int k = 0; k < 2; k++) {
        const uint8_t *start = m->buf + m->pos;
        size_t lim = m->n - m->pos < 256 ? m->n - m->pos : 256;
        const uint8_t *nl = memchr(start, '\n', lim);
        if (!nl)
            return fail(m, RB_ERR_FORMAT, "GLOBAL name is not terminated");
        s[k] = (const char *)start;
        l[k] = (size_t)(nl - start);
        m->pos += l[k] + 1;
    }
    return push_global(m, s[0], l[0], s[1], l[1]);
}

/* ---- builders ---- */

static rb_status persistent_id(vm *m) {
    rb_pk_value *pid = pop(m);
    if (!pid)
        return fail(m, RB_ERR_FORMAT, "stack underflow at BINPERSID");
    if (pid->kind != RB_PK_TUPLE || (pid->n != 5 && pid->n != 6) || pid->items[0]->kind != RB_PK_STR ||
        strcmp(pid->items[0]->s, "storage") || pid->items[1]->kind != RB_PK_GLOBAL ||
        pid->items[1]->g != RB_PKG_STORAGE_TYPE || pid->items[2]->kind != RB_PK_STR ||
        pid->items[3]->kind != RB_PK_STR || pid->items[4]->kind != RB_PK_INT || pid->items[4]->i < 0 ||
        (pid->n == 6 && pid->items[5]->kind != RB_PK_NONE))
        return fail(m, RB_ERR_FORMAT,
                    "persistent id is not ('storage', torch.<Type>Storage, key, location, numel)");
    rb_pk_value *v = node(m, RB_PK_STORAGE);
    if (!v)
        return RB_ERR_OOM;
    v->dtype = pid->items[1]->dtype;
    v->s = malloc(pid->items[2]->len + 1);
    if (!v->s)
        return rb_error(RB_ERR_OOM, "%s: out of memory", m->what);
    memcpy(v->s, pid->items[2]->s, pid->items[2]->len + 1);
    v->len = pid->items[2]->len;
    v->i = pid->items[4]->i;
    return push(m, v);
}

static int int_tuple(const rb_pk_value *t, int64_t *out, int max, int *n) {
    if (t->kind != RB_PK_TUPLE)
        return 0;
    if (t->n > (size_t)max) {
        *n = (int)(t->n > 1000 ? 1000 : t->n);
        return -1;
    }
    for (size_t i = 0; i < t->n; i++) {
        if (t->items[i]->kind != RB_PK_INT || t->items[i]->i < 0)
            return 0;
        out[i] = t->items[i]->i;
    }
    *n = (int)t->n;
    return 1;
}

static rb_status rebuild_tensor(vm *m, rb_pk_value *args) {
    rb_pk_value **a = args->items;
    if ((args->n != 6 && args->n != 7) || a[0]->kind != RB_PK_STORAGE || a[1]->kind != RB_PK_INT || a[1]->i < 0 ||
        a[4]->kind != RB_PK_BOOL || a[5]->kind != RB_PK_DICT ||
        (args->n == 7 && a[6]->kind != RB_PK_DICT && a[6]->kind != RB_PK_NONE))
        return fail(m, RB_ERR_FORMAT,
                    "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, requires_grad, hooks)");
    rb_pk_value *t = node(m, RB_PK_TENSOR);
    if (!t)
        return RB_ERR_OOM;
    int nd = 0, ns = 0;
    int r1 = int_tuple(a[2], t->shape, RB_MAX_DIMS, &nd), r2 = int_tuple(a[3], t->stride, RB_MAX_DIMS, &ns);
    if (r1 < 0 || r2 < 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "tensor with %d dimensions (at most %d supported)", r1 < 0 ? nd : ns, RB_MAX_DIMS);
        return fail(m, RB_ERR_UNSUPPORTED, msg);
    }
    if (!r1 || !r2 || nd != ns)
        return fail(m, RB_ERR_FORMAT, "tensor size/stride are not tuples of non-negative integers of equal length");
    t->ndim = nd;
    t->storage = a[0];
    t->dtype = a[0]->dtype;
    t->offset = a[1]->i;
    /* The view must stay inside its storage: offset + sum((size-1)*stride) < numel. */
    uint64_t last = (uint64_t)t->offset, numel = 1;
    for (int d = 0; d < nd; d++)
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return fail(m, RB_ERR_FORMAT, "tensor size overflows");
    for (int d = 0; d < nd && numel; d++) {
        uint64_t ext;
        if (__builtin_mul_overflow((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d], &ext) ||
            __builtin_add_overflow(last, ext, &last))
            return fail(m, RB_ERR_FORMAT, "tensor extent overflows");
    }
    if (numel ? last >= (uint64_t)a[0]->i : (uint64_t)t->offset > (uint64_t)a[0]->i) {
        char msg[256];
        snprintf(msg, sizeof msg, "tensor view (storage offset %lld, last element %llu) is outside storage '%.40s' of %lld elements",
                 (long long)t->offset, (unsigned long long)last, a[0]->s, (long long)a[0]->i);
        return fail(m, RB_ERR_FORMAT, msg);
    }
    return push(m, t);
}

static rb_status op_reduce(vm *m) {
    rb_pk_value *args = pop(m), *fn = pop(m);
    if (!args || !fn)
        return fail(m, RB_ERR_FORMAT, "stack underflow at REDUCE");
    if (fn->kind != RB_PK_GLOBAL || args->kind != RB_PK_TUPLE)
        return fail(m, RB_ERR_FORMAT, "REDUCE of something that is not an allowed global");
    switch (fn->g) {
    case RB_PKG_ORDERED_DICT:
        if (args->n)
            return fail(m, RB_ERR_FORMAT, "OrderedDict() with arguments");
        return push(m, node(m, RB_PK_DICT));
    case RB_PKG_REBUILD_TENSOR_V2:
        return rebuild_tensor(m, args);
    case RB_PKG_REBUILD_PARAMETER: {
        if (args->n != 3 || args->items[0]->kind != RB_PK_TENSOR || args->items[1]->kind != RB_PK_BOOL ||
            args->items[2]->kind != RB_PK_DICT)
            return fail(m, RB_ERR_FORMAT, "_rebuild_parameter arguments are not (tensor, requires_grad, hooks)");
        rb_pk_value *p = node(m, RB_PK_TENSOR);
        if (!p)
            return RB_ERR_OOM;
        rb_pk_value keep = *p;
        *p = *args->items[0];
        p->items = keep.items, p->s = keep.s, p->n = 0, p->cap = 0; /* tensors own no arrays */
        p->is_param = 1;
        return push(m, p);
    }
    default:
        return fail(m, RB_ERR_FORMAT, "a storage type is not callable");
    }
}

/* ---- the interpreter ---- */

rb_status rb_pickle_load(rb_pk_pool *pool, const uint8_t *buf, size_t n, const char *what, rb_pk_value **out,
                         size_t *used) {
    vm m = {.pool = pool, .buf = buf, .n = n, .what = what};
    rb_status st = RB_OK;
    *out = NULL;
    static rb_pk_value none_v = {.kind = RB_PK_NONE}, true_v = {.kind = RB_PK_BOOL, .i = 1},
                       false_v = {.kind = RB_PK_BOOL, .i = 0};
    while (st == RB_OK) {
        if (m.pos >= n) {
            st = rb_error(RB_ERR_FORMAT, "%s: pickle ends at byte %zu without STOP (truncated)", what, n);
            break;
        }
        m.op_pos = m.pos;
        uint8_t op = buf[m.pos++];
        switch (op) {
        case 0x80: /* PROTO */
            if (!need(&m, 1))
                goto truncated;
            if (buf[m.pos] < 2 || buf[m.pos] > 5)
                st = fail(&m, RB_ERR_UNSUPPORTED, "pickle protocol outside 2..5");
            m.pos++;
            break;
        case 0x95: { /* FRAME: an 8-byte length; frames are only a buffering hint */
            if (!need(&m, 8))
                goto truncated;
            uint64_t fl = rd32(buf + m.pos) | (uint64_t)rd32(buf + m.pos + 4) << 32;
            m.pos += 8;
            if (fl > n - m.pos)
                st = fail(&m, RB_ERR_FORMAT, "FRAME longer than the pickle");
            break;
        }
        case '.': { /* STOP */
            rb_pk_value *v = pop(&m);
            if (!v || v->kind == RB_PK_MARK) {
                st = fail(&m, RB_ERR_FORMAT, "STOP with an empty stack");
                break;
            }
            *out = v;
            if (used)
                *used = m.pos;
            goto done;
        }
        case '(': /* MARK */
            if (!grow((void **)&m.marks, &m.mcap, m.nmarks + 1, sizeof *m.marks)) {
                st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
                break;
            }
            m.marks[m.nmarks++] = m.sp;
            break;
        case '}': st = push(&m, node(&m, RB_PK_DICT)); break;
        case ']': st = push(&m, node(&m, RB_PK_LIST)); break;
        case ')': st = push(&m, node(&m, RB_PK_TUPLE)); break;
        case 'N': st = push(&m, &none_v); break;
        case 0x88: st = push(&m, &true_v); break;
        case 0x89: st = push(&m, &false_v); break;
        case 'X': /* BINUNICODE */
            if (!need(&m, 4))
                goto truncated;
            m.pos += 4;
            st = push_str(&m, rd32(buf + m.pos - 4));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            if (!need(&m, 1))
                goto truncated;
            m.pos++;
            st = push_str(&m, buf[m.pos - 1]);
            break;
        case 'K': /* BININT1 */
            if (!need(&m, 1))
                goto truncated;
            st = push_int(&m, buf[m.pos++]);
            break;
        case 'M': /* BININT2 */
            if (!need(&m, 2))
                goto truncated;
            st = push_int(&m, buf[m.pos] | buf[m.pos + 1] << 8);
            m.pos += 2;
            break;
        case 'J': /* BININT */
            if (!need(&m, 4))
                goto truncated;
            st = push_int(&m, (int32_t)rd32(buf + m.pos));
            m.pos += 4;
            break;
        case 0x8a: { /* LONG1: little-endian two's complement */
            if (!need(&m, 1) || !need(&m, 1u + buf[m.pos]))
                goto truncated;
            size_t k = buf[m.pos++];
            if (k > 8) {
                st = fail(&m, RB_ERR_UNSUPPORTED, "integer wider than 64 bits");
                break;
            }
            uint64_t u = 0;
            for (size_t i = 0; i < k; i++)
                u |= (uint64_t)buf[m.pos + i] << (8 * i);
            if (k && k < 8 && (buf[m.pos + k - 1] & 0x80))
                u |= ~(uint64_t)0 << (8 * k);
            m.pos += k;
            st = push_int(&m, (int64_t)u);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            if (!need(&m, 8))
                goto truncated;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++)
                u = u << 8 | buf[m.pos + i];
            m.pos += 8;
            rb_pk_value *v = node(&m, RB_PK_FLOAT);
            if (v)
                memcpy(&v->f, &u, 8);
            st = push(&m, v);
            break;
        }
        case 'q': case 'r': case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
            size_t idx;
            if (op == 0x94) {
                idx = m.memo_count; /* MEMOIZE numbers entries by the memo's current size */
            } else {
                size_t k = op == 'q' ? 1 : 4;
                if (!need(&m, k))
                    goto truncated;
                idx = op == 'q' ? buf[m.pos] : rd32(buf + m.pos);
                m.pos += k;
            }
            rb_pk_value *v = top(&m);
            if (!v) {
                st = fail(&m, RB_ERR_FORMAT, "memo put with an empty stack");
                break;
            }
            if (idx > n) {
                st = fail(&m, RB_ERR_FORMAT, "memo index larger than the pickle");
                break;
            }
            size_t old = m.memo_cap;
            if (!grow((void **)&m.memo, &m.memo_cap, idx + 1, sizeof *m.memo)) {
                st = rb_error(RB_ERR_OOM, "%s: out of memory for the pickle memo", what);
                break;
            }
            memset(m.memo + old, 0, (m.memo_cap - old) * sizeof *m.memo);
            m.memo_count += m.memo[idx] == NULL;
            m.memo[idx] = v;
            break;
        }
        case 'h': case 'j': { /* BINGET, LONG_BINGET */
            size_t k = op == 'h' ? 1 : 4;
            if (!need(&m, k))
                goto truncated;
            size_t idx = op == 'h' ? buf[m.pos] : rd32(buf + m.pos);
            m.pos += k;
            if (idx >= m.memo_cap || !m.memo[idx]) {
                st = fail(&m, RB_ERR_FORMAT, "memo get of an unset index");
                break;
            }
            st = push(&m, m.memo[idx]);
            break;
        }
        case 't': case 'l': case 'd': { /* TUPLE, LIST, DICT from the last MARK */
            size_t start;
            if (!pop_mark(&m, &start)) {
                st = fail(&m, RB_ERR_FORMAT, "no MARK");
                break;
            }
            rb_pk_value *v = node(&m, op == 't' ? RB_PK_TUPLE : op == 'l' ? RB_PK_LIST : RB_PK_DICT);
            if (!v) {
                st = RB_ERR_OOM;
                break;
            }
            if (op == 'd' && (m.sp - start) % 2) {
                st = fail(&m, RB_ERR_FORMAT, "DICT with an odd number of items");
                break;
            }
            for (size_t i = start; i < m.sp && st == RB_OK; i++)
                if (!add_item(v, m.stack[i]))
                    st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
            m.sp = start;
            if (st == RB_OK)
                st = push(&m, v);
            break;
        }
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t k = (size_t)(op - 0x84);
            if (m.sp < floor_of(&m) + k) {
                st = fail(&m, RB_ERR_FORMAT, "stack underflow at TUPLEn");
                break;
            }
            rb_pk_value *v = node(&m, RB_PK_TUPLE);
            if (!v) {
                st = RB_ERR_OOM;
                break;
            }
            for (size_t i = m.sp - k; i < m.sp && st == RB_OK; i++)
                if (!add_item(v, m.stack[i]))
                    st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
            m.sp -= k;
            if (st == RB_OK)
                st = push(&m, v);
            break;
        }
        case 's': { /* SETITEM */
            rb_pk_value *v = pop(&m), *k = pop(&m), *d = top(&m);
            if (!v || !k || !d || d->kind != RB_PK_DICT) {
                st = fail(&m, RB_ERR_FORMAT, "SETITEM without a dict");
                break;
            }
            if (!add_item(d, k) || !add_item(d, v))
                st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
            break;
        }
        case 'u': case 'e': { /* SETITEMS, APPENDS */
            size_t start;
            if (!pop_mark(&m, &start)) {
                st = fail(&m, RB_ERR_FORMAT, "no MARK");
                break;
            }
            rb_pk_value *c = start > floor_of(&m) ? m.stack[start - 1] : NULL; /* the container below the MARK */
            if (!c || c->kind != (op == 'u' ? RB_PK_DICT : RB_PK_LIST) || (op == 'u' && (m.sp - start) % 2)) {
                st = fail(&m, RB_ERR_FORMAT, op == 'u' ? "SETITEMS without a dict or with an odd count"
                                                       : "APPENDS without a list");
                break;
            }
            for (size_t i = start; i < m.sp && st == RB_OK; i++)
                if (!add_item(c, m.stack[i]))
                    st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
            m.sp = start;
            break;
        }
        case 'a': { /* APPEND */
            rb_pk_value *v = pop(&m), *l = top(&m);
            if (!v || !l || l->kind != RB_PK_LIST) {
                st = fail(&m, RB_ERR_FORMAT, "APPEND without a list");
                break;
            }
            if (!add_item(l, v))
                st = rb_error(RB_ERR_OOM, "%s: out of memory in pickle", what);
            break;
        }
        case '0': /* POP */
            if (!pop(&m))
                st = fail(&m, RB_ERR_FORMAT, "stack underflow at POP");
            break;
        case '1': { /* POP_MARK */
            size_t start;
            if (!pop_mark(&m, &start))
                st = fail(&m, RB_ERR_FORMAT, "no MARK");
            else
                m.sp = start;
            break;
        }
        case 'c': st = op_global(&m); break;
        case 0x93: { /* STACK_GLOBAL */
            rb_pk_value *name = pop(&m), *mod = pop(&m);
            if (!name || !mod || name->kind != RB_PK_STR || mod->kind != RB_PK_STR)
                st = fail(&m, RB_ERR_FORMAT, "STACK_GLOBAL needs two strings");
            else
                st = push_global(&m, mod->s, mod->len, name->s, name->len);
            break;
        }
        case 'Q': st = persistent_id(&m); break;
        case 'R': st = op_reduce(&m); break;
        case 'b': { /* BUILD: only the attribute state of an OrderedDict (e.g. _metadata), ignored */
            rb_pk_value *state = pop(&m), *obj = top(&m);
            if (!state || !obj || obj->kind != RB_PK_DICT)
                st = fail(&m, RB_ERR_FORMAT, "BUILD is only accepted on an OrderedDict");
            break;
        }
        default: {
            char msg[64];
            snprintf(msg, sizeof msg, "unsupported pickle opcode 0x%02x", op);
            st = fail(&m, RB_ERR_UNSUPPORTED, msg);
            break;
        }
        }
        continue;
    truncated:
        st = rb_error(RB_ERR_FORMAT, "%s: pickle truncated at byte %zu", what, m.op_pos);
    }
done:
    free(m.stack);
    free(m.marks);
    free(m.memo);
    return st;
}
