/* Data-parallel scale-out over MPI (OpenMPI from Debian; docs/distributed.md).
 *
 * One process per rank, every rank running the same program: `mpirun -np N relbooth eval ...`.
 * rb_dist_init decides whether MPI is used at all:
 *   - MPI already initialised by the host program: used as is (and not finalised by us);
 *   - RELBOOTH_MPI=0: never; RELBOOTH_MPI=1: always (a program started without mpirun becomes an
 *     OpenMPI "singleton", a world of one);
 *   - otherwise only when a launcher started us (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_RANK is set),
 *     so a plain `relbooth eval` never touches MPI (no daemon is forked, nothing is opened).
 * Without MPI every function below works as the world of one: rank 0, size 1, collectives copy.
 *
 * Every call returns a status, never aborts: MPI_COMM_WORLD gets MPI_ERRORS_RETURN, and a failing MPI
 * call becomes RB_ERR_IO with MPI's message. Collectives must be called by every rank in the same
 * order with the same sizes (MPI's rule); a rank that fails must still take part in them (callers agree
 * on failures with rb_dist_any), or the others wait forever.
 * Only the thread that called rb_dist_init may call the others (MPI_THREAD_FUNNELED). */
#ifndef RB_CORE_DIST_H
#define RB_CORE_DIST_H

#include <stddef.h>

#include "relbooth.h"

/* argc/argv may be NULL; MPI may remove its own arguments from them. Calling it again is a no-op. */
rb_status rb_dist_init(int *argc, char ***argv);
/* MPI_Finalize if rb_dist_init called MPI_Init; afterwards the world is one process again. */
rb_status rb_dist_finalize(void);

int rb_dist_rank(void);   /* 0 without MPI */
int rb_dist_size(void);   /* 1 without MPI */
int rb_dist_active(void); /* 1 when MPI is in use (even a singleton) */

rb_status rb_dist_barrier(void);

/* buf[i] = sum over ranks of buf[i], on every rank (the caller divides for a mean).
 * Deterministic and the same on every rank whatever MPI's algorithm choices: rank 0 receives the
 * ranks' values in chunks, adds them in rank order 0, 1, ..., N-1 (f32: in double, rounded once at
 * the end) and broadcasts the result. So the sum equals a sequential loop over ranks, bit for bit, and
 * a rerun with the same process count gives the same bits. Costs N x the buffer at rank 0 per chunk
 * (bounded: 1M elements a chunk), which is fine for the few ranks of a data-parallel run. */
rb_status rb_dist_allreduce_sum_f32(float *buf, size_t n);
rb_status rb_dist_allreduce_sum_f64(double *buf, size_t n);

/* *flag = 1 on every rank if it is non-zero on any rank, else 0 (for agreeing on failures). */
rb_status rb_dist_any(int *flag);

/* Copies root's bytes into every rank's buf. */
rb_status rb_dist_bcast(void *buf, size_t bytes, int root);

/* Concatenates every rank's bytes at root, in rank order: *all (rb_alloc'd, NUL-terminated, to be
 * rb_free'd; NULL on other ranks) holds rank r's bytes at [offsets[r], offsets[r + 1]); offsets has
 * rb_dist_size() + 1 entries and is filled on root only. Each rank may send up to 2 GiB. */
rb_status rb_dist_gather_bytes(const void *data, size_t n, int root, char **all, size_t *offsets);

#endif
