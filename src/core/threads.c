#include <omp.h>

#include "relbooth.h"

void rb_set_num_threads(int n) {
    if (n <= 0)
        n = omp_get_num_procs();
    omp_set_num_threads(n);
}

int rb_get_num_threads(void) { return omp_get_max_threads(); }
