#include "file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

rb_status rb_atomic_open(rb_atomic_file *f, const char *path) {
    f->fd = -1;
    f->path = path;
    size_t len = strlen(path), tlen;
    if (!rb_add_size(len, 16, &tlen))
        return rb_error(RB_ERR_INVALID, "output path too long");
    f->tmp = rb_alloc(tlen, "temporary file name");
    if (!f->tmp)
        return RB_ERR_OOM;
    snprintf(f->tmp, tlen, "%s.tmp-XXXXXX", path);
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        rb_status s = rb_error(RB_ERR_IO, "%s: cannot create a temporary file next to it: %s", path, strerror(errno));
        rb_free(f->tmp);
        f->tmp = NULL;
        return s;
    }
    /* mkstemp makes 0600; outputs get the usual 0666 & ~umask */
    mode_t um = umask(022);
    umask(um);
    (void)fchmod(f->fd, 0666 & ~um);
    return RB_OK;
}

rb_status rb_atomic_write(rb_atomic_file *f, const void *data, size_t n) {
    const char *c = data;
    while (n) {
        ssize_t w = write(f->fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return rb_error(RB_ERR_IO, "%s: write failed: %s", f->path, w < 0 ? strerror(errno) : "no progress");
        c += w;
        n -= (size_t)w;
    }
    return RB_OK;
}

rb_status rb_atomic_commit(rb_atomic_file *f, rb_status s) {
    if (s == RB_OK && fsync(f->fd) != 0)
        s = rb_error(RB_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
    if (f->fd >= 0 && close(f->fd) != 0 && s == RB_OK)
        s = rb_error(RB_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
    f->fd = -1;
    if (s == RB_OK && rename(f->tmp, f->path) != 0)
        s = rb_error(RB_ERR_IO, "%s: cannot rename the temporary file into place: %s", f->path, strerror(errno));
    if (s != RB_OK) {
        unlink(f->tmp);
    } else { /* make the rename itself durable; a failure here does not undo the write */
        char *slash = strrchr(f->tmp, '/');
        if (slash)
            slash[slash == f->tmp ? 1 : 0] = 0;
        int dfd = open(slash ? f->tmp : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
    rb_free(f->tmp);
    f->tmp = NULL;
    return s;
}
