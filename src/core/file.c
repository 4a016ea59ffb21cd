#include "file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mem.h"

rb_status rb_read_file(const char *path, size_t max_bytes, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return rb_error(RB_ERR_IO, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > max_bytes) {
        fclose(f);
        return rb_error(RB_ERR_FORMAT, "%s: %lld bytes, more than the %zu accepted", path, (long long)st.st_size,
                        max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = rb_alloc(n + 1, path);
    if (!buf) {
        fclose(f);
        return RB_ERR_OOM;
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        rb_free(buf);
        return rb_error(RB_ERR_IO, "%s: short read (%zu of %zu bytes)", path, got, n);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return RB_OK;
}

rb_status rb_map_file(const char *path, void **map, size_t *size) {
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rb_error(RB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return rb_error(RB_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            return rb_error(RB_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        }
        *map = m;
        *size = (size_t)sb.st_size;
    }
    close(fd);
    return RB_OK;
}

void rb_unmap_file(void *map, size_t size) {
    if (map)
        munmap(map, size);
}
