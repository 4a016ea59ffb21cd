/* libFuzzer target: PyTorch checkpoints on bytes in memory (rb_torch_open_mem): the zip layer, the
 * legacy stream and the restricted unpickler behind both; every tensor view is read back. */
#include "fuzz.h"
#include "io/torchfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rb_set_mem_limit(FUZZ_MEM_LIMIT);
    (void)rb_torch_sniff(data, size);
    rb_torchfile f;
    if (rb_torch_open_mem(&f, data, size, "fuzz.pt") != RB_OK)
        return 0;
    for (int i = 0; i < f.n; i++) {
        fuzz_touch(&f.entries[i].t);
        (void)rb_torch_get(&f, f.entries[i].name);
    }
    for (int i = 0; i < f.n_scalars; i++) {
        const rb_torch_scalar *s = rb_torch_scalar_get(&f, f.scalars[i].name);
        if (s && s->kind == RB_TS_STR && s->s)
            fuzz_sink ^= (uint8_t)s->s[0];
    }
    rb_torch_close(&f);
    return 0;
}
