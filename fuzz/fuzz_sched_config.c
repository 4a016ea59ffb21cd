/* libFuzzer target: scheduler_config.json (rb_sched_config_load). The reader takes a path, so the
 * input goes to an in-memory file (memfd) read through /proc/self/fd. An accepted config is then
 * used as a caller would: build the schedule, set timesteps and run one step of each sampler. */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "sched/scheduler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-config", 0);
        if (fd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();
    rb_sched_config c;
    if (rb_sched_config_load(&c, path) != RB_OK)
        return 0;
    rb_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return 0;
    rb_sampler sampler = (rb_sampler)(size % RB_SAMPLER_COUNT);
    if (rb_sched_init(s, &c, sampler) == RB_OK && rb_sched_set_timesteps(s, 1 + (int)(size % 50)) == RB_OK) {
        float x[4] = {0.5f, -1.f, 2.f, 0.f}, eps[4] = {0.1f, 0.2f, -0.3f, 0.f}, noise[4] = {1, 0, -1, 0}, in[4];
        for (int i = 0; i < s->n_steps; i++) {
            rb_sched_scale_input(s, i, x, in, 4);
            if (rb_sched_step(s, i, eps, x, noise, NULL, 4) != RB_OK)
                break;
        }
        float out[4];
        (void)rb_sched_add_noise(s, (int64_t)(size % 1200) - 100, x, noise, out, 4);
    }
    rb_sched_free(s);
    free(s);
    return 0;
}
