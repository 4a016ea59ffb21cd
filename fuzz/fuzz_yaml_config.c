/* libFuzzer target: DreamRelation's YAML inference config (rb_dr_config_load, libyaml underneath).
 * The reader takes a path, so the input goes to an in-memory file (memfd) read through /proc/self/fd. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "pipelines/dr_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    static rb_dr_config store;
    if (fd < 0) {
        fd = memfd_create("fuzz-yaml", 0);
        if (fd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();
    rb_gen_params p;
    rb_gen_params_init(&p);
    if (rb_dr_config_load(path, &store, &p) == RB_OK) {
        /* read what the parser accepted, as generate would */
        for (int i = 0; i < p.n_subjects; i++) {
            uint8_t b[sizeof p.subjects[i].box];
            memcpy(b, p.subjects[i].box, sizeof b);
            fuzz_sink ^= (uint8_t)(p.subjects[i].image[0] ^ p.subjects[i].phrase[0] ^ b[0] ^ b[sizeof b - 1]);
        }
        fuzz_sink ^= (uint8_t)p.prompt[0];
    }
    return 0;
}
