#include <stdio.h>

#include "cli.h"

int cmd_info(int argc, char **argv) {
    fprintf(stderr, "relbooth info: not built yet\n");
    return RB_EXIT_FAIL;
}
