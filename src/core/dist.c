/* MPI behind a small status-returning layer (dist.h). Without MPI in use every function is the world of
 * one. Collectives are chunked so each MPI call moves at most CHUNK elements (MPI counts are int). */
#include "core/dist.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "core/mem.h"
#include "core/status.h"

#define CHUNK ((size_t)1 << 20) /* elements per reduction step */

static int g_active, g_owned, g_rank, g_size = 1;

static rb_status mpi_fail(int err, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error %d", err);
    return rb_error(RB_ERR_IO, "MPI: %s failed: %s", what, msg);
}
#define MPI_TRY(call, what)                  \
    do {                                     \
        int mpi_err_ = (call);               \
        if (mpi_err_ != MPI_SUCCESS)         \
            return mpi_fail(mpi_err_, what); \
    } while (0)

static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

rb_status rb_dist_init(int *argc, char ***argv) {
    if (g_active)
        return RB_OK;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return RB_OK; /* MPI cannot be started twice in a process: stay a world of one */
    if (!inited) {
        const char *env = getenv("RELBOOTH_MPI");
        int want = env && *env ? strcmp(env, "0") != 0 : launched_by_mpirun();
        if (!want)
            return RB_OK;
        int provided = 0;
        int err = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (err != MPI_SUCCESS)
            return rb_error(RB_ERR_IO, "MPI: MPI_Init_thread failed (error %d); RELBOOTH_MPI=0 runs without MPI",
                            err);
        g_owned = 1;
    }
    g_active = 1;
    MPI_TRY(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    MPI_TRY(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank), "MPI_Comm_rank");
    MPI_TRY(MPI_Comm_size(MPI_COMM_WORLD, &g_size), "MPI_Comm_size");
    return RB_OK;
}

rb_status rb_dist_finalize(void) {
    int owned = g_owned, active = g_active;
    g_active = g_owned = g_rank = 0, g_size = 1;
    if (active && owned)
        MPI_TRY(MPI_Finalize(), "MPI_Finalize");
    return RB_OK;
}

int rb_dist_rank(void) { return g_rank; }
int rb_dist_size(void) { return g_size; }
int rb_dist_active(void) { return g_active; }

rb_status rb_dist_barrier(void) {
    if (g_active)
        MPI_TRY(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
    return RB_OK;
}

rb_status rb_dist_bcast(void *buf, size_t bytes, int root) {
    if (root < 0 || root >= g_size)
        return rb_error(RB_ERR_INVALID, "rb_dist_bcast: root %d of %d ranks", root, g_size);
    if (!g_active || g_size == 1)
        return RB_OK;
    for (size_t off = 0; off < bytes; off += INT_MAX / 2) {
        size_t n = bytes - off < INT_MAX / 2 ? bytes - off : INT_MAX / 2;
        MPI_TRY(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
    return RB_OK;
}

rb_status rb_dist_any(int *flag) {
    int v = *flag != 0, out = v;
    if (g_active && g_size > 1)
        MPI_TRY(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    *flag = out;
    return RB_OK;
}

/* The deterministic sum (dist.h): per chunk, gather every rank's slice at rank 0, add in rank order,
 * broadcast. `esz` is 4 (f32, summed in double) or 8 (f64). */
static rb_status allreduce_sum(void *buf, size_t n, size_t esz) {
    if (!g_active || g_size == 1 || n == 0)
        return RB_OK;
    MPI_Datatype t = esz == 4 ? MPI_FLOAT : MPI_DOUBLE;
    size_t chunk = n < CHUNK ? n : CHUNK;
    void *all = NULL;
    size_t bytes;
    if (g_rank == 0 && rb_mul_size(chunk * esz, (size_t)g_size, &bytes))
        all = rb_alloc(bytes, "dist allreduce");
    int failed = g_rank == 0 && !all; /* every rank must learn it, or they would wait in MPI_Gather */
    RB_TRY(rb_dist_any(&failed));
    if (failed)
        return rb_error(RB_ERR_OOM, "rb_dist_allreduce: rank 0 cannot hold %d ranks x %zu elements", g_size, chunk);
    rb_status s = RB_OK;
    for (size_t off = 0; off < n && s == RB_OK; off += chunk) {
        int m = (int)(n - off < chunk ? n - off : chunk);
        char *mine = (char *)buf + off * esz;
        int err = MPI_Gather(mine, m, t, all, m, t, 0, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) {
            s = mpi_fail(err, "MPI_Gather");
            break;
        }
        if (g_rank == 0) {
            for (int i = 0; i < m; i++) {
                if (esz == 4) {
                    double acc = 0;
                    for (int r = 0; r < g_size; r++)
                        acc += ((const float *)all)[(size_t)r * (size_t)m + (size_t)i];
                    ((float *)mine)[i] = (float)acc;
                } else {
                    double acc = 0;
                    for (int r = 0; r < g_size; r++)
                        acc += ((const double *)all)[(size_t)r * (size_t)m + (size_t)i];
                    ((double *)mine)[i] = acc;
                }
            }
        }
        err = MPI_Bcast(mine, m, t, 0, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS)
            s = mpi_fail(err, "MPI_Bcast");
    }
    rb_free(all);
    return s;
}

rb_status rb_dist_allreduce_sum_f32(float *buf, size_t n) { return allreduce_sum(buf, n, sizeof(float)); }
rb_status rb_dist_allreduce_sum_f64(double *buf, size_t n) { return allreduce_sum(buf, n, sizeof(double)); }

rb_status rb_dist_gather_bytes(const void *data, size_t n, int root, char **all, size_t *offsets) {
    *all = NULL;
    if (root < 0 || root >= g_size)
        return rb_error(RB_ERR_INVALID, "rb_dist_gather_bytes: root %d of %d ranks", root, g_size);
    if (n > INT_MAX)
        return rb_error(RB_ERR_INVALID, "rb_dist_gather_bytes: %zu bytes from one rank (at most 2 GiB)", n);
    if (!g_active || g_size == 1) {
        if (!(*all = rb_alloc(n + 1, "dist gather")))
            return RB_ERR_OOM;
        if (n)
            memcpy(*all, data, n);
        (*all)[n] = 0;
        offsets[0] = 0, offsets[1] = n;
        return RB_OK;
    }
    int mine = (int)n, *counts = NULL, *displs = NULL;
    int is_root = g_rank == root;
    if (is_root)
        counts = rb_alloc(2 * (size_t)g_size * sizeof(int), "dist gather");
    int failed = is_root && !counts; /* all ranks agree before each collective (dist.h) */
    RB_TRY(rb_dist_any(&failed));
    if (failed)
        return rb_error(RB_ERR_OOM, "rb_dist_gather_bytes: out of memory at rank %d", root);
    displs = counts ? counts + g_size : NULL;
    int err = MPI_Gather(&mine, 1, MPI_INT, counts, 1, MPI_INT, root, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS) {
        rb_free(counts);
        return mpi_fail(err, "MPI_Gather");
    }
    size_t total = 0;
    if (is_root) {
        for (int r = 0; r < g_size; r++) {
            offsets[r] = total;
            total += (size_t)counts[r];
            displs[r] = (int)(total <= INT_MAX ? offsets[r] : 0);
        }
        offsets[g_size] = total;
        if (total <= INT_MAX) /* MPI_Gatherv displacements are int */
            *all = rb_alloc(total + 1, "dist gather");
        failed = !*all;
    }
    rb_status s = rb_dist_any(&failed);
    if (s == RB_OK && failed)
        s = rb_error(RB_ERR_OOM, "rb_dist_gather_bytes: rank %d cannot hold the gathered bytes (out of memory "
                                 "or over 2 GiB)", root);
    if (s == RB_OK) {
        err = MPI_Gatherv(data, mine, MPI_BYTE, *all, counts, displs, MPI_BYTE, root, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS)
            s = mpi_fail(err, "MPI_Gatherv");
    }
    rb_free(counts);
    if (s != RB_OK) {
        rb_free(*all);
        *all = NULL;
        return s;
    }
    if (*all)
        (*all)[total] = 0;
    return RB_OK;
}
