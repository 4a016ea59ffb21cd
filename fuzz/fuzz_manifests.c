/* libFuzzer target: the JSON manifests of relbooth eval (RelationBench array or our object form) and
 * of relbooth train (the relation-data manifest). Both readers take a path, so the input goes to an
 * in-memory file (memfd) read through /proc/self/fd; the first input byte picks the reader. Files a
 * manifest names do not exist here: the readers must fail cleanly after parsing. */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "pipelines/eval.h"
#include "pipelines/relation_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-manifest", 0);
        if (fd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (size < 1)
        return 0;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
        abort();
    if (data[0] & 1) {
        rb_eval_manifest m;
        if (rb_eval_manifest_load(&m, path, "/nonexistent", NULL) == RB_OK)
            rb_eval_manifest_free(&m);
    } else {
        rb_relation_data_options o;
        rb_relation_data_options_init(&o);
        o.check_files = 1;
        rb_relation_dataset ds;
        if (rb_relation_dataset_open(&ds, path, &o) == RB_OK) {
            fuzz_sink ^= (uint8_t)rb_relation_dataset_count(&ds);
            rb_relation_dataset_close(&ds);
        }
    }
    return 0;
}
