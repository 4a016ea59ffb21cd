/* relbooth: relation-aware customized image generation (DreamRelation) in C11.
 *
 * Public C API. Library functions return an rb_status; on failure a one-line message naming the
 * file or argument and the problem is available from rb_last_error() (per thread). The library
 * never aborts the host process on bad input or when memory runs out.
 */
#ifndef RELBOOTH_H
#define RELBOOTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RELBOOTH_VERSION "0.1.0"

typedef enum rb_status {
    RB_OK = 0,
    RB_ERR_INVALID = 1,     /* bad argument or inconsistent shapes/dtypes */
    RB_ERR_IO = 2,          /* open/read/write/rename failed */
    RB_ERR_FORMAT = 3,      /* malformed or hostile file contents */
    RB_ERR_OOM = 4,         /* allocation failed or memory budget exceeded */
    RB_ERR_UNSUPPORTED = 5, /* valid input we do not handle (dtype, op, codec) */
    RB_ERR_CANCELLED = 6,   /* a cancel callback asked us to stop */
    RB_ERR_INTERNAL = 7,    /* a library bug or a failing backend (oneDNN) */
} rb_status;

/* Name of a status ("format error", ...). */
const char *rb_status_str(rb_status s);
/* Message of the last error on this thread ("" if none). */
const char *rb_last_error(void);
void rb_clear_error(void);

/* Threads used by the CPU kernels (OpenMP). n <= 0 means all cores. */
void rb_set_num_threads(int n);
int rb_get_num_threads(void);

/* Process-wide budget, in bytes, for memory that relbooth allocates for tensors and arenas
 * (0 = unlimited; default from RELBOOTH_MEM_LIMIT, e.g. "20G"). Requests past it fail with
 * RB_ERR_OOM instead of letting the kernel kill the process. */
void rb_set_mem_limit(size_t bytes);
size_t rb_get_mem_limit(void);
size_t rb_mem_in_use(void);
size_t rb_mem_peak(void);

#ifdef __cplusplus
}
#endif
#endif
