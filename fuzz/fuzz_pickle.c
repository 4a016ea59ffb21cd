/* libFuzzer target: the restricted pickle VM alone (rb_pickle_load), which torch checkpoints reach
 * only after their zip/legacy framing; fuzzing it directly gets deeper into the opcodes. The
 * resulting value tree is walked to check that every node is well formed. */
#include "fuzz.h"
#include "io/pickle.h"

/* Values form a DAG (memo GETs and DUP share nodes), so a walk is bounded by a visit budget, not
 * only by depth: a few hundred bytes of pickle can describe 2^100 paths. */
static long visits;

static void walk(const rb_pk_value *v, int depth) {
    if (!v || depth > 200 || ++visits > 100000)
        return;
    switch (v->kind) {
    case RB_PK_STR:
        if (v->len)
            fuzz_sink ^= (uint8_t)(v->s[0] ^ v->s[v->len - 1]);
        break;
    case RB_PK_TUPLE:
    case RB_PK_LIST:
    case RB_PK_DICT:
        for (size_t i = 0; i < v->n; i++)
            walk(v->items[i], depth + 1);
        (void)rb_pk_dict_get(v, "state_dict");
        break;
    case RB_PK_TENSOR: walk(v->storage, depth + 1); break;
    case RB_PK_STORAGE:
        if (v->s)
            fuzz_sink ^= (uint8_t)v->s[0];
        break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rb_set_mem_limit(FUZZ_MEM_LIMIT);
    rb_pk_pool pool = {0};
    rb_pk_value *root = NULL;
    size_t used = 0;
    if (rb_pickle_load(&pool, data, size, "fuzz.pkl", &root, &used) == RB_OK) {
        if (used > size)
            __builtin_trap();
        visits = 0;
        walk(root, 0);
    }
    rb_pk_pool_free(&pool);
    return 0;
}
