/* stockade-agent's file watches (watch.h). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "frame.h"
#include "json.h"
#include "watch.h"

#define ROOT_MASK (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | \
                   IN_DELETE_SELF | IN_MOVE_SELF)
/* A subdirectory's own deletion or move is reported by its parent's watch. */
#define TREE_MASK (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | \
                   IN_ONLYDIR | IN_DONT_FOLLOW)

/* The watch table: c->wds[i] is the inotify watch of the directory c->names[i]. */
static const char *wd_path(const chan *c, int wd)
{
    for (size_t i = 0; i < c->nnames; i++)
        if (c->wds[i] == wd)
            return c->names[i];
    return NULL;
}

static void limit_event(chan *c, sb *out, const char *why);
static int table_add(chan *c, const char *dir, int wd);

/* Watch dir (one more entry in the table); 0, or -1 when the watch cap was reached. */
static int add_watch(chan *c, const char *dir, uint32_t mask, sb *out)
{
    if (c->nnames >= WATCH_MAX) {
        limit_event(c, out, "more than 8192 directories: the rest of the tree is not watched");
        return -1;
    }
    int wd = inotify_add_watch(c->fd, dir, mask);
    if (wd < 0) {
        if (errno == ENOSPC)
            limit_event(c, out, "the sandbox's inotify watches are used up: the rest of "
                                "the tree is not watched");
        return errno == ENOSPC ? -1 : 0; /* gone meanwhile, or not a directory: skipped */
    }
    return table_add(c, dir, wd);
}

/* Remember that wd watches dir; 0, or -1 (the watch removed again) without memory. */
static int table_add(chan *c, const char *dir, int wd)
{
    for (size_t i = 0; i < c->nnames; i++)
        if (c->wds[i] == wd)
            return 0; /* the same directory reached twice (a bind mount) */
    if (c->nnames == c->idx) {
        size_t cap = c->idx ? c->idx * 2 : 16;
        char **names = realloc(c->names, cap * sizeof *names);
        if (names)
            c->names = names;
        int *wds = names ? realloc(c->wds, cap * sizeof *wds) : NULL;
        if (!wds) {
            inotify_rm_watch(c->fd, wd);
            return -1;
        }
        c->wds = wds;
        c->idx = cap;
    }
    char *copy = strdup(dir);
    if (!copy) {
        inotify_rm_watch(c->fd, wd);
        return -1;
    }
    c->names[c->nnames] = copy;
    c->wds[c->nnames++] = wd;
    return 0;
}

/* Watch every directory below dir (dir itself is watched already), depth first, never
 * following symlinks; stops at the watch cap. */
static int add_tree(chan *c, const char *dir, int depth, sb *out)
{
    if (depth >= WATCH_DEPTH)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t dlen = strlen(dir);
    struct dirent *de;
    int r = 0;
    while (!r && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        size_t nlen = strlen(de->d_name);
        if (dlen + 1 + nlen > PATH_LIMIT)
            continue;
        char path[PATH_LIMIT + 2];
        memcpy(path, dir, dlen);
        size_t at = dlen && dir[dlen - 1] == '/' ? dlen : dlen + 1;
        path[dlen] = '/';
        memcpy(path + at, de->d_name, nlen + 1);
        struct stat st;
        if (de->d_type == DT_DIR || (de->d_type == DT_UNKNOWN && lstat(path, &st) == 0 &&
                                     S_ISDIR(st.st_mode))) {
            r = add_watch(c, path, TREE_MASK, out);
            if (!r)
                r = add_tree(c, path, depth + 1, out);
        }
    }
    closedir(d);
    return r;
}

static void event_head(sb *out, const char *type)
{
    sb_put(out, out->len > 11 ? "," : "", out->len > 11 ? 1 : 0);
    sb_fmt(out, "{\"type\":\"%s\"", type);
}

static void limit_event(chan *c, sb *out, const char *why)
{
    if (c->limited) /* said once per channel */
        return;
    c->limited = 1;
    event_head(out, "limit");
    sb_str(out, ",\"message\":");
    sb_jstr(out, why, strlen(why));
    sb_put(out, "}", 1);
}

static void path_event(sb *out, const char *type, const char *path, const char *dest, int dir)
{
    event_head(out, type);
    sb_str(out, ",\"path\":");
    sb_jstr(out, path, strlen(path));
    if (dest) {
        sb_str(out, ",\"dest\":");
        sb_jstr(out, dest, strlen(dest));
    }
    sb_str(out, dir ? ",\"dir\":true}" : ",\"dir\":false}");
}

/* dir + "/" + name into buf; 0 if it would be longer than PATH_LIMIT (then skipped). */
static int join(char *buf, const char *dir, const char *name)
{
    size_t dlen = strlen(dir), nlen = strlen(name);
    if (!nlen) {
        if (dlen > PATH_LIMIT)
            return 0;
        memcpy(buf, dir, dlen + 1);
        return 1;
    }
    if (dlen + 1 + nlen > PATH_LIMIT)
        return 0;
    memcpy(buf, dir, dlen);
    size_t at = dlen && dir[dlen - 1] == '/' ? dlen : dlen + 1;
    buf[dlen] = '/';
    memcpy(buf + at, name, nlen + 1);
    return 1;
}

/* A watched directory moved within the tree: its watches (and those below) keep their
 * descriptors, so only the paths they stand for change. */
static void moved_dir(chan *c, const char *from, const char *to)
{
    size_t flen = strlen(from), tlen = strlen(to);
    for (size_t i = 0; i < c->nnames; i++) {
        char *old = c->names[i];
        if (strncmp(old, from, flen) || (old[flen] && old[flen] != '/'))
            continue;
        size_t rest = strlen(old + flen);
        if (tlen + rest > PATH_LIMIT)
            continue;
        char *np = malloc(tlen + rest + 1);
        if (!np)
            continue;
        memcpy(np, to, tlen);
        memcpy(np + tlen, old + flen, rest + 1);
        free(old);
        c->names[i] = np;
    }
}

static void forget_wd(chan *c, int wd)
{
    for (size_t i = 0; i < c->nnames; i++)
        if (c->wds[i] == wd) {
            free(c->names[i]);
            c->names[i] = c->names[c->nnames - 1];
            c->wds[i] = c->wds[c->nnames - 1];
            c->nnames--;
            return;
        }
}

int watch_pending(const chan *c)
{
    return c->kind == K_WATCH && !c->dead && (c->inq.len > c->inq_off || c->overflowed);
}

static void overflow_event(sb *out)
{
    event_head(out, "overflow");
    sb_str(out, ",\"message\":\"events were lost: the sandbox made them faster than they "
                "were read\"}");
}

/* One DATA frame from the raw events read so far (c->inq from c->inq_off). */
void watch_step(chan *c)
{
    sb out = {0};
    char path[PATH_LIMIT + 2], dest[PATH_LIMIT + 2];
    sb_str(&out, "{\"events\":[");
    const size_t hsz = sizeof(struct inotify_event);
    while (c->inq.len - c->inq_off >= hsz && out.len < WATCH_FRAME && !out.oom) {
        struct inotify_event ev, nx;
        memcpy(&ev, c->inq.p + c->inq_off, hsz);
        const char *name = c->inq.p + c->inq_off + hsz;
        c->inq_off += hsz + ev.len;
        if (!ev.len)
            name = "";
        if (ev.mask & IN_Q_OVERFLOW) {
            overflow_event(&out);
            continue;
        }
        if (ev.mask & IN_IGNORED) {
            forget_wd(c, ev.wd);
            continue;
        }
        const char *dir = wd_path(c, ev.wd);
        if (!dir || !join(path, dir, name))
            continue; /* a watch removed meanwhile, or a path over the limit */
        int isdir = (ev.mask & IN_ISDIR) != 0;
        if (ev.mask & IN_MOVED_FROM) {
            /* Its IN_MOVED_TO follows at once when the target is watched too. */
            size_t at = c->inq_off;
            const char *nname = c->inq.p + at + hsz;
            if (c->inq.len - at >= hsz) {
                memcpy(&nx, c->inq.p + at, hsz);
                const char *ndir = wd_path(c, nx.wd);
                if ((nx.mask & IN_MOVED_TO) && nx.cookie == ev.cookie && ndir &&
                    join(dest, ndir, nx.len ? nname : "")) {
                    c->inq_off += hsz + nx.len;
                    path_event(&out, "rename", path, dest, isdir);
                    if (isdir)
                        moved_dir(c, path, dest);
                    continue;
                }
            }
            path_event(&out, "delete", path, NULL, isdir); /* moved out of the tree */
        } else if (ev.mask & (IN_CREATE | IN_MOVED_TO)) {
            path_event(&out, "create", path, NULL, isdir);
            if (isdir && c->recursive && add_watch(c, path, TREE_MASK, &out) == 0)
                add_tree(c, path, 1, &out);
        } else if (ev.mask & IN_MODIFY) {
            path_event(&out, "modify", path, NULL, isdir);
        } else if (ev.mask & IN_DELETE) {
            path_event(&out, "delete", path, NULL, isdir);
        } else if (ev.mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
            path_event(&out, ev.mask & IN_DELETE_SELF ? "delete" : "rename", path, NULL, isdir);
        }
    }
    if (c->inq.len - c->inq_off < hsz) { /* all taken: the buffer starts over */
        c->inq.len = 0;
        c->inq_off = 0;
        if (c->overflowed) { /* after the events kept, in order */
            c->overflowed = 0;
            overflow_event(&out);
        }
    }
    sb_str(&out, "]}");
    if (out.oom) {
        sb_free(&out);
        chan_fail(c, ENOMEM, "cannot watch");
        return;
    }
    if (out.len <= 13) { /* no event worth sending */
        sb_free(&out);
        return;
    }
    c->window -= out.len < c->window ? out.len : c->window;
    emit_sb(T_DATA, c->id, &out);
}

/* The inotify descriptor is readable: move its events into the channel's buffer, or
 * past WATCH_QUEUE drop them (and say so after the ones kept); then send what the window
 * allows. The buffer grows only as far as events actually wait. */
void pump_watch(chan *c)
{
    static char buf[64 * 1024]; /* inotify reads whole events, each under NAME_MAX + 17 */
    ssize_t n;
    do
        n = read(c->fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) {
        chan_fail(c, errno, "cannot watch");
        return;
    }
    if (n > 0 && c->inq_off) { /* keep the unsent part at the buffer's start */
        memmove(c->inq.p, c->inq.p + c->inq_off, c->inq.len - c->inq_off);
        c->inq.len -= c->inq_off;
        c->inq_off = 0;
    }
    if (n > 0 && c->inq.len + (size_t)n > WATCH_QUEUE) {
        c->overflowed = 1;
    } else if (n > 0) {
        sb_put(&c->inq, buf, (size_t)n);
        if (c->inq.oom) {
            chan_fail(c, ENOMEM, "cannot watch");
            return;
        }
    }
    while (!c->dead && watch_pending(c) && c->window >= WATCH_NEED && oq_bytes < OUTQ_HIGH)
        watch_step(c);
}

void do_file_watch(uint32_t ch, const jv *p, const jv *req)
{
    int recursive;
    if (jbool(req, "recursive", 0, &recursive)) {
        emit_bad(ch, "bad request: \"recursive\" must be a boolean for", p->s, p->n);
        return;
    }
    struct stat st;
    if (stat(p->s, &st) < 0) {
        emit_error(ch, errno, "cannot watch", p->s, p->n);
        return;
    }
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        emit_error(ch, errno, "cannot watch", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_WATCH);
    if (!c) {
        close(fd);
        emit_error(ch, ENOMEM, "too many open channels; cannot watch", p->s, p->n);
        return;
    }
    c->fd = fd;
    c->recursive = recursive && S_ISDIR(st.st_mode);
    sb out = {0};
    sb_str(&out, "{\"events\":[");
    int wd = inotify_add_watch(fd, p->s, ROOT_MASK);
    if (wd < 0 || table_add(c, p->s, wd)) {
        int e = wd < 0 ? errno : ENOMEM;
        sb_free(&out);
        emit_error(ch, e, "cannot watch", p->s, p->n);
        chan_abort(c);
        return;
    }
    if (c->recursive)
        add_tree(c, p->s, 0, &out);
    /* READY once every watch is set: what happens after it is reported. A "limit" event
     * from the walk follows in the first DATA. */
    sb_str(&out, "]}");
    emit(T_READY, ch, NULL, 0);
    if (out.len > 13 && !out.oom) {
        c->window -= out.len;
        emit_sb(T_DATA, ch, &out);
    } else {
        sb_free(&out);
    }
}
