/* libFuzzer target: the safetensors reader on bytes in memory (rb_st_open_mem), then every tensor
 * and metadata entry it exposes is read back. */
#include <string.h>

#include "fuzz.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rb_set_mem_limit(FUZZ_MEM_LIMIT);
    (void)rb_st_sniff(data, size);
    rb_safetensors f;
    if (rb_st_open_mem(&f, data, size, "fuzz.safetensors") != RB_OK)
        return 0;
    for (int i = 0; i < f.n; i++) {
        fuzz_touch(&f.entries[i].t);
        const rb_tensor *t = rb_st_get(&f, f.entries[i].name);
        if (!t)
            __builtin_trap(); /* every listed name must be found again */
    }
    for (int i = 0; i < f.n_meta; i++)
        if (rb_st_meta(&f, f.meta_keys[i]) == NULL)
            __builtin_trap();
    (void)rb_st_get(&f, "");
    rb_st_close(&f);
    return 0;
}
