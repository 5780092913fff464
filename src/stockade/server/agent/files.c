/* stockade-agent's file operations (files.h). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "files.h"
#include "frame.h"
#include "json.h"

/* ------------------------------------------------------------------------------------ */
/* File operations                                                                       */
/* ------------------------------------------------------------------------------------ */

/* The request's "path": absolute, no NUL, at most PATH_LIMIT bytes. Sends ERROR if not. */
const jv *req_path(uint32_t ch, const jv *req)
{
    const jv *p = jget(req, "path");
    if (!p || p->t != J_STR) {
        emit_bad(ch, "bad request: \"path\" must be a string", NULL, 0);
        return NULL;
    }
    if (!cstring_ok(p) || p->s[0] != '/') {
        emit_bad(ch, "bad request: the path must be absolute and without NUL:",
                   p->s, p->n);
        return NULL;
    }
    if (p->n > PATH_LIMIT) {
        emit_error(ch, ENAMETOOLONG, "path too long:", p->s, p->n);
        return NULL;
    }
    return p;
}

static int all_slashes(const char *p)
{
    return p[strspn(p, "/")] == 0;
}

/* The last component of the path ("/" for the root). */
static void base_name(const char *path, size_t plen, const char **name, size_t *nlen)
{
    while (plen > 1 && path[plen - 1] == '/')
        plen--;
    size_t start = plen;
    while (start > 0 && path[start - 1] != '/')
        start--;
    if (start == plen) { /* only slashes */
        *name = "/";
        *nlen = 1;
        return;
    }
    *name = path + start;
    *nlen = plen - start;
}

/* The file info of path (lstat), in a RESULT; or an ERROR. */
static void emit_info(uint32_t ch, const char *path, size_t plen)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        emit_error(ch, errno, "cannot stat", path, plen);
        return;
    }
    char target[PATH_MAX + 1];
    ssize_t tl = -1;
    if (S_ISLNK(st.st_mode))
        tl = readlink(path, target, sizeof target);
    const char *name;
    size_t nlen;
    base_name(path, plen, &name, &nlen);
    sb b = {0};
    sb_info(&b, path, plen, name, nlen, &st, tl >= 0 ? target : NULL, tl >= 0 ? (size_t)tl : 0);
    emit_sb(T_RESULT, ch, &b);
}

/* mkdir -p: every component of path (a writable copy) with mode 0755. 0 or an errno;
 * a component that exists but is not a directory gives ENOTDIR. */
static int mkdir_parents(char *path)
{
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char saved = *p;
        *p = 0;
        struct stat st;
        int e = 0;
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            e = errno;
        else if (stat(path, &st) < 0)
            e = errno;
        else if (!S_ISDIR(st.st_mode))
            e = ENOTDIR;
        *p = saved;
        if (e || !saved)
            return e;
        while (p[1] == '/')
            p++;
        if (!p[1])
            return 0; /* trailing slash */
    }
}

void do_file_read(uint32_t ch, const jv *p)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; reads go through poll. */
    int fd = open(p->s, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0) {
        emit_error(ch, errno, "cannot open", p->s, p->n);
        return;
    }
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        emit_error(ch, EISDIR, "cannot read a directory (list it instead):", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_READ);
    if (!c || !(c->path = strdup(p->s))) {
        close(fd);
        emit_error(ch, ENOMEM, "too many open channels; cannot read", p->s, p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->fd = fd;
}

void pump_file_read(chan *c)
{
    size_t want = c->window < CHUNK ? (size_t)c->window : CHUNK;
    unsigned char buf[CHUNK];
    ssize_t n;
    if (!want)
        return;
    do
        n = read(c->fd, buf, want);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        emit(T_DATA, c->id, buf, (size_t)n);
        c->window -= (uint64_t)n;
    } else if (n == 0) {
        emit(T_END, c->id, NULL, 0);
        chan_abort(c);
    } else if (errno != EAGAIN) {
        chan_fail(c, errno, "cannot read");
    }
}

/* ------------------------------------------------------------------------------------ */
/* Acting as a user                                                                      */
/* ------------------------------------------------------------------------------------ */

/* The request's "uid" and "gid" (FILE_WRITE, FILE_MKDIR): who the operation acts as, so
 * that the kernel checks that user's permissions (a symlink planted by the sandbox's own
 * code leads only where the user may write) and what is made belongs to the user. Each is
 * -1 when absent: the agent's own root. Sends ERROR if either is not in 0..2^31-1 (the
 * kernel's -1, "unchanged", is excluded). */
static int req_user(uint32_t ch, const jv *p, const jv *req, as_user *u)
{
    if (jint(req, "uid", 0, 2147483647L, -1, &u->uid) ||
        jint(req, "gid", 0, 2147483647L, -1, &u->gid)) {
        emit_bad(ch, "bad request: \"uid\" and \"gid\" must be integers in "
                     "0..2147483647 for", p->s, p->n);
        return -1;
    }
    return 0;
}

typedef struct {
    const as_user *u;
    int (*op)(void *);
    void *arg;
} user_call;

/* The helper runs on this stack while the agent waits (CLONE_VFORK): one is enough. */
static char user_stack[64 * 1024] __attribute__((aligned(16)));

/* In the helper: take on the user's credentials (group first, while still root; no
 * supplementary groups, as an exec with a user gets), then run the operation. Real,
 * effective and saved ids all change, so nothing of root's is left to act with. The exit
 * status carries the operation's errno. */
static int user_child(void *arg)
{
    const user_call *c = arg;
    int e;
    if (setgroups(0, NULL) < 0 ||
        (c->u->gid >= 0 && setresgid((gid_t)c->u->gid, (gid_t)c->u->gid,
                                     (gid_t)c->u->gid) < 0) ||
        (c->u->uid >= 0 && setresuid((uid_t)c->u->uid, (uid_t)c->u->uid,
                                     (uid_t)c->u->uid) < 0))
        e = errno;
    else
        e = c->op(c->arg);
    _exit(e > 0 && e < 256 ? e : e ? EIO : 0);
}

/* op(arg) acting as u: 0 or an errno. Without a user it runs in the agent, as root.
 * With one it runs in a helper process, because a process's credentials are its own:
 * setfsuid would leave root's supplementary groups in force, and the agent must stay
 * root. The helper shares the agent's descriptor table (CLONE_FILES), so a file it opens
 * is the agent's; and its memory (CLONE_VM, as exec's children do; not in sanitizer
 * builds, where a plain copy works the same). */
static int run_as(const as_user *u, int (*op)(void *), void *arg)
{
    if (u->uid < 0 && u->gid < 0)
        return op(arg);
    user_call c = {u, op, arg};
    /* No handler of ours may run in the helper (it would share our memory). */
    sigset_t all, saved;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &saved);
    int flags = CLONE_FILES | CLONE_VFORK | SIGCHLD;
#ifndef AGENT_USE_FORK
    flags |= CLONE_VM;
#endif
    pid_t pid = clone(user_child, user_stack + sizeof user_stack, flags, &c);
    int e = pid < 0 ? errno : 0;
    sigprocmask(SIG_SETMASK, &saved, NULL);
    if (e)
        return e;
    /* Reaped here, before the main loop's reaper can see it (which ignores it anyway). */
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return ECHILD;
    return WIFEXITED(st) ? WEXITSTATUS(st) : EIO;
}

static int make_parents_op(void *path) { return mkdir_parents(path); }

typedef struct {
    const char *path;
    mode_t mode;
    int fd; /* the agent's placeholder descriptor: the opened file replaces it */
} open_req;

/* Open for writing, then put the file on the placeholder's number: the helper's memory
 * may be a copy, but its descriptor table is the agent's. */
static int open_write_op(void *arg)
{
    open_req *o = arg;
    /* The mode applies when the file is created (the agent's umask is 0), as with open(2).
     * O_NONBLOCK: a FIFO planted at the path must not hang the agent. */
    int fd = open(o->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                  o->mode);
    if (fd < 0)
        return errno;
    int e = dup3(fd, o->fd, O_CLOEXEC) < 0 ? errno : 0;
    close(fd);
    return e;
}

void do_file_write(uint32_t ch, const jv *p, const jv *req)
{
    long mode;
    as_user u;
    if (jint(req, "mode", 0, 07777, 0644, &mode)) {
        emit_bad(ch, "bad request: \"mode\" must be an integer in 0..4095 for",
                   p->s, p->n);
        return;
    }
    if (req_user(ch, p, req, &u))
        return;
    if (all_slashes(p->s)) {
        emit_error(ch, EISDIR, "cannot write", p->s, p->n);
        return;
    }
    char *parent = strdup(p->s);
    if (!parent) {
        emit_error(ch, ENOMEM, "cannot write", p->s, p->n);
        return;
    }
    char *slash = strrchr(parent, '/');
    int e = 0;
    if (slash != parent) { /* the parent of "/x" is "/", which exists */
        *slash = 0;
        e = run_as(&u, make_parents_op, parent);
    }
    free(parent);
    if (e) {
        emit_error(ch, e, "cannot create the parent directories of", p->s, p->n);
        return;
    }
    /* A descriptor of our own (a copy of fd 0) reserves the number the file will take. */
    open_req o = {p->s, (mode_t)mode, fcntl(0, F_DUPFD_CLOEXEC, 3)};
    e = o.fd < 0 ? errno : run_as(&u, open_write_op, &o);
    if (e) {
        close_fd(&o.fd);
        emit_error(ch, e, "cannot open", p->s, p->n);
        return;
    }
    int fd = o.fd;
    chan *c = new_chan(ch, K_WRITE);
    if (!c || !(c->path = strdup(p->s))) {
        close(fd);
        emit_error(ch, ENOMEM, "too many open channels; cannot write", p->s, p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->fd = fd;
    emit(T_READY, ch, NULL, 0);
}

void on_file_data(chan *c, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            /* Report now: the server can stop sending; later DATA finds no channel. */
            chan_fail(c, w < 0 ? errno : EIO, "cannot write");
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void on_file_end(chan *c)
{
    int fd = c->fd;
    c->fd = -1;
    if (close(fd) < 0 && errno != EINTR) {
        chan_fail(c, errno, "cannot write");
        return;
    }
    emit_info(c->id, c->path, c->plen);
    chan_abort(c);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void do_file_list(uint32_t ch, const jv *p)
{
    int dirfd = open(p->s, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        emit_error(ch, errno, "cannot list", p->s, p->n);
        return;
    }
    int rfd = dup(dirfd);
    DIR *d = rfd < 0 ? NULL : fdopendir(rfd);
    if (!d) {
        int e = errno;
        close_fd(&rfd);
        close(dirfd);
        emit_error(ch, e, "cannot list", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_LIST);
    int e = c && (c->path = strdup(p->s)) ? 0 : ENOMEM;
    size_t cap = 0;
    struct dirent *de;
    /* All names first: the count decides E2BIG before any entry is sent, and the result
     * is sorted. Only names are held; each entry is stat'ed when its batch is built. */
    while (!e && (errno = 0, de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (c->nnames >= LIST_MAX) {
            e = E2BIG;
            break;
        }
        if (c->nnames == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(c->names, cap * sizeof *grown);
            if (!grown) {
                e = ENOMEM;
                break;
            }
            c->names = grown;
        }
        if (!(c->names[c->nnames] = strdup(de->d_name)))
            e = ENOMEM;
        else
            c->nnames++;
    }
    if (!e && errno)
        e = errno;
    closedir(d);
    if (e) {
        close(dirfd);
        emit_error(ch, e, e == E2BIG ? "more than 100000 entries in" : "cannot list", p->s,
                   p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->dirfd = dirfd;
    qsort(c->names, c->nnames, sizeof *c->names, cmp_names);
    list_step(c);
}

/* One batch of entries: DATA {"entries": [...]} while more follow, RESULT for the last. */
void list_step(chan *c)
{
    sb b = {0}, path = {0};
    int first = 1;
    sb_str(&b, "{\"entries\":[");
    while (c->idx < c->nnames && b.len < LIST_BATCH && !b.oom) {
        const char *name = c->names[c->idx++];
        struct stat st;
        if (fstatat(c->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed since readdir */
        char target[PATH_MAX + 1];
        ssize_t tl = S_ISLNK(st.st_mode) ? readlinkat(c->dirfd, name, target, sizeof target) : -1;
        path.len = 0;
        sb_put(&path, c->path, c->plen);
        if (c->plen && c->path[c->plen - 1] != '/')
            sb_put(&path, "/", 1);
        sb_str(&path, name);
        if (!first)
            sb_put(&b, ",", 1);
        first = 0;
        sb_info(&b, path.p ? path.p : "", path.len, name, strlen(name), &st,
                tl >= 0 ? target : NULL, tl >= 0 ? (size_t)tl : 0);
        if (path.oom)
            b.oom = 1;
    }
    sb_free(&path);
    sb_str(&b, "]}");
    if (b.oom) {
        sb_free(&b);
        chan_fail(c, ENOMEM, "cannot list");
        return;
    }
    int last = c->idx >= c->nnames;
    emit_sb(last ? T_RESULT : T_DATA, c->id, &b);
    if (last)
        chan_abort(c);
}

void do_file_stat(uint32_t ch, const jv *p) { emit_info(ch, p->s, p->n); }

typedef struct {
    const char *path;
    char *copy; /* a writable copy of path, for mkdir_parents */
    int parents;
} mkdir_req;

static int mkdir_op(void *arg)
{
    const mkdir_req *m = arg;
    struct stat st;
    int e = 0;
    if (stat(m->path, &st) == 0) {
        e = S_ISDIR(st.st_mode) ? 0 : EEXIST;
    } else if (errno != ENOENT) {
        e = errno;
    } else if (m->parents) {
        e = mkdir_parents(m->copy);
    } else if (mkdir(m->path, 0755) < 0) {
        e = errno;
        if (e == EEXIST) /* created meanwhile: fine if it is a directory */
            e = stat(m->path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : EEXIST;
    }
    return e;
}

void do_file_mkdir(uint32_t ch, const jv *p, const jv *req)
{
    int parents;
    as_user u;
    if (jbool(req, "parents", 0, &parents)) {
        emit_bad(ch, "bad request: \"parents\" must be a boolean for", p->s, p->n);
        return;
    }
    if (req_user(ch, p, req, &u))
        return;
    /* Allocated here: the helper may share our memory but must not use the allocator. */
    mkdir_req m = {p->s, strdup(p->s), parents};
    int e = m.copy ? run_as(&u, mkdir_op, &m) : ENOMEM;
    free(m.copy);
    if (e)
        emit_error(ch, e, e == EEXIST ? "exists and is not a directory:" : "cannot create",
                   p->s, p->n);
    else
        emit_info(ch, p->s, p->n);
}

static int rm_errno;
static char rm_path[PATH_LIMIT + 1];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int r = flag == FTW_DP || flag == FTW_DNR ? rmdir(path) : unlink(path);
    if (r < 0 && errno != ENOENT) {
        rm_errno = errno;
        snprintf(rm_path, sizeof rm_path, "%s", path);
        return 1; /* stop at the first failure and report it */
    }
    return 0;
}

void do_file_remove(uint32_t ch, const jv *p, const jv *req)
{
    int recursive;
    if (jbool(req, "recursive", 0, &recursive)) {
        emit_bad(ch, "bad request: \"recursive\" must be a boolean for", p->s, p->n);
        return;
    }
    if (all_slashes(p->s)) {
        emit_error(ch, EACCES, "refusing to remove", p->s, p->n);
        return;
    }
    struct stat st;
    if (lstat(p->s, &st) < 0) {
        emit_error(ch, errno, "cannot remove", p->s, p->n);
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(p->s) < 0)
            emit_error(ch, errno, "cannot remove", p->s, p->n);
        else
            emit(T_RESULT, ch, "{}", 2);
        return;
    }
    if (!recursive) {
        if (rmdir(p->s) < 0) {
            int e = errno == EEXIST ? ENOTEMPTY : errno;
            emit_error(ch, e, e == ENOTEMPTY ? "directory not empty (remove it recursively):"
                                             : "cannot remove", p->s, p->n);
        } else {
            emit(T_RESULT, ch, "{}", 2);
        }
        return;
    }
    /* Depth first, never following symlinks: a link to elsewhere is removed, not walked. */
    rm_errno = 0;
    int r = nftw(p->s, rm_one, 32, FTW_DEPTH | FTW_PHYS);
    if (r < 0 && !rm_errno) {
        rm_errno = errno;
        snprintf(rm_path, sizeof rm_path, "%s", p->s);
    }
    if (rm_errno)
        emit_error(ch, rm_errno, "cannot remove", rm_path, strlen(rm_path));
    else
        emit(T_RESULT, ch, "{}", 2);
}

/* FILE_RENAME {"path", "dest"}: rename(2), so within one filesystem; a RESULT with the
 * info of dest. */
void do_file_rename(uint32_t ch, const jv *p, const jv *req)
{
    const jv *d = jget(req, "dest");
    if (!d || d->t != J_STR || !cstring_ok(d) || d->s[0] != '/') {
        emit_bad(ch, "bad request: \"dest\" must be an absolute path without NUL for",
                 p->s, p->n);
        return;
    }
    if (d->n > PATH_LIMIT) {
        emit_error(ch, ENAMETOOLONG, "path too long:", d->s, d->n);
        return;
    }
    if (all_slashes(p->s) || all_slashes(d->s)) {
        emit_error(ch, EBUSY, "cannot rename the root directory:", p->s, p->n);
        return;
    }
    if (rename(p->s, d->s) < 0) {
        int e = errno;
        struct stat st;
        if (e == ENOENT && lstat(p->s, &st) == 0)
            emit_error(ch, e, "the destination's parent directory does not exist:", d->s,
                       d->n);
        else
            emit_error(ch, e, "cannot rename", p->s, p->n);
        return;
    }
    emit_info(ch, d->s, d->n);
}

/* FILE_CHMOD {"path", "mode"}: chmod(2) (a symlink's target, as chmod(1) does); a RESULT
 * with the new info. */
void do_file_chmod(uint32_t ch, const jv *p, const jv *req)
{
    long mode;
    if (jint(req, "mode", 0, 07777, -1, &mode) || mode < 0) {
        emit_bad(ch, "bad request: \"mode\" must be an integer in 0..4095 for", p->s, p->n);
        return;
    }
    if (chmod(p->s, (mode_t)mode) < 0)
        emit_error(ch, errno, "cannot chmod", p->s, p->n);
    else
        emit_info(ch, p->s, p->n);
}
