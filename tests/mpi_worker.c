/* Helper of tests/test_dist.c, started by it (under `mpirun -np N` or alone): exercises every call of
 * src/core/dist.h on every rank against values computed here independently, prints one line per
 * problem ("rank R: FAIL ...") and "rank R/N ok" at the end; exit status 0 only when all held.
 * usage: mpi_worker EXPECTED_SIZE */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dist.h"
#include "core/mem.h"
#include "relbooth.h"

static int fails, rank;

#define EXPECT(cond, ...)                          \
    do {                                           \
        if (!(cond)) {                             \
            printf("rank %d: FAIL ", rank);        \
            printf(__VA_ARGS__);                   \
            printf(" (line %d)\n", __LINE__);      \
            fails++;                               \
        }                                          \
    } while (0)

/* Values whose float sum depends on the order of addition: 1e8-scale terms cancel small ones. */
static double value(int r, size_t i) {
    double big = (double)((i * 2654435761u) % 1000003) * (r % 2 ? -1e3 : 1e3);
    return big + (double)r * 0.1 + (double)(i % 7) * 1e-3;
}

int main(int argc, char **argv) {
    int want = argc > 1 ? atoi(argv[1]) : 1;
    if (rb_dist_init(&argc, &argv) != RB_OK) {
        printf("rank ?: FAIL rb_dist_init: %s\n", rb_last_error());
        return 1;
    }
    rank = rb_dist_rank();
    int size = rb_dist_size();
    EXPECT(size == want && rank >= 0 && rank < size, "rank %d of %d, expected a world of %d", rank, size, want);
    EXPECT(rb_dist_barrier() == RB_OK, "barrier: %s", rb_last_error());

    /* sums: more than one 1M-element chunk, so the chunking is exercised */
    size_t n = ((size_t)1 << 20) + 5;
    float *f = rb_alloc(n * sizeof(float), "test");
    double *d = rb_alloc(n * sizeof(double), "test");
    if (!f || !d)
        return 1;
    for (size_t i = 0; i < n; i++)
        f[i] = (float)value(rank, i), d[i] = value(rank, i) * 1.000001;
    EXPECT(rb_dist_allreduce_sum_f32(f, n) == RB_OK, "allreduce f32: %s", rb_last_error());
    EXPECT(rb_dist_allreduce_sum_f64(d, n) == RB_OK, "allreduce f64: %s", rb_last_error());
    size_t bad_f = 0, bad_d = 0;
    for (size_t i = 0; i < n; i++) {
        double sf = 0, sd = 0; /* rank order 0..N-1, f32 inputs summed in double (dist.h) */
        for (int r = 0; r < size; r++)
            sf += (double)(float)value(r, i), sd += value(r, i) * 1.000001;
        bad_f += f[i] != (float)sf;
        bad_d += d[i] != sd;
    }
    EXPECT(!bad_f && !bad_d, "allreduce: %zu f32 and %zu f64 sums differ from the rank-order sum", bad_f, bad_d);
    rb_free(f), rb_free(d);

    /* broadcast from the last rank */
    char msg[64] = {0};
    if (rank == size - 1)
        snprintf(msg, sizeof msg, "from rank %d", size - 1);
    EXPECT(rb_dist_bcast(msg, sizeof msg, size - 1) == RB_OK, "bcast: %s", rb_last_error());
    char want_msg[64];
    snprintf(want_msg, sizeof want_msg, "from rank %d", size - 1);
    EXPECT(!strcmp(msg, want_msg), "bcast gave '%s'", msg);
    EXPECT(rb_dist_bcast(msg, 1, size) == RB_ERR_INVALID, "bcast from a rank that does not exist");

    /* gather: rank r sends r copies of "<r>;" (rank 0 sends nothing) */
    char mine[256] = "";
    for (int k = 0; k < rank && k < 40; k++)
        snprintf(mine + strlen(mine), sizeof mine - strlen(mine), "%d;", rank);
    size_t *off = rb_alloc(((size_t)size + 1) * sizeof(size_t), "test");
    char *all = NULL;
    int root = size > 1 ? 1 : 0;
    EXPECT(rb_dist_gather_bytes(mine, strlen(mine), root, &all, off) == RB_OK, "gather: %s", rb_last_error());
    if (rank == root) {
        char expect[4096] = "";
        for (int r = 0; r < size; r++)
            for (int k = 0; k < r && k < 40; k++)
                snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "%d;", r);
        EXPECT(all && !strcmp(all, expect), "gather gave '%s', expected '%s'", all ? all : "(null)", expect);
        EXPECT(off[0] == 0 && off[size] == strlen(expect), "offsets 0..%zu", off[size]);
        for (int r = 0; r < size; r++)
            EXPECT(off[r + 1] - off[r] == (size_t)(r < 40 ? r : 40) * 2, "rank %d sent %zu bytes", r,
                   off[r + 1] - off[r]);
    } else {
        EXPECT(!all, "gather result on a rank that is not the root");
    }
    rb_free(all), rb_free(off);

    /* agreement */
    int flag = rank == size - 1;
    EXPECT(rb_dist_any(&flag) == RB_OK && flag == 1, "any(one rank set) = %d", flag);
    flag = 0;
    EXPECT(rb_dist_any(&flag) == RB_OK && flag == 0, "any(none set) = %d", flag);

    int active = rb_dist_active();
    EXPECT(rb_dist_finalize() == RB_OK, "finalize: %s", rb_last_error());
    EXPECT(rb_dist_size() == 1 && rb_dist_rank() == 0, "after finalize: world of one");
    if (!fails)
        printf("rank %d/%d ok (mpi %s)\n", rank, size, active ? "on" : "off");
    fflush(stdout);
    return fails ? 1 : 0;
}
