/* stockade-agent's processes: spawning them, and the channels of execs (exec.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "exec.h"
#include "frame.h"
#include "json.h"

/* ------------------------------------------------------------------------------------ */
/* Spawning processes                                                                    */
/* ------------------------------------------------------------------------------------ */

enum { STAGE_SETUP = 1, STAGE_CHDIR = 2, STAGE_EXEC = 3 };

struct rlimit orig_nofile; /* restored in children: the agent raises its own */

/* execvpe() semantics on the PATH of the given env (not the agent's). Returns the errno
 * to report when nothing could be executed. */
static int exec_search(const char *file, char *const argv[], char *const envp[])
{
    if (!*file)
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    const char *path = DEFAULT_PATH;
    for (char *const *e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5; /* the last one wins, as getenv would see it after putenv */
    size_t flen = strlen(file);
    if (flen > NAME_MAX)
        return ENAMETOOLONG;
    int eacces = 0;
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        char buf[PATH_MAX];
        if (dlen + flen + 2 <= sizeof buf) {
            /* An empty PATH element means the current directory, as in POSIX. */
            memcpy(buf, dlen ? p : ".", dlen ? dlen : 1);
            size_t at = dlen ? dlen : 1;
            buf[at] = '/';
            memcpy(buf + at + 1, file, flen + 1);
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES: eacces = 1; break;
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT: case ELOOP:
            case ENAMETOOLONG: break;
            default: return errno;
            }
        }
        if (!*end)
            break;
        p = end;
    }
    return eacces ? EACCES : ENOENT;
}

static void child_fail(int ep, int stage, int err, const spawn_req *r)
{
    if (ep >= 0) {
        int msg[2] = {stage, err};
        if (write(ep, msg, sizeof msg) < 0) {
        }
    } else {
        logmsg("cannot %s %s: %s", stage == STAGE_EXEC ? "execute" : "start", r->argv[0],
               strerror(err));
    }
    _exit(err == EACCES || err == ENOEXEC ? 126 : 127);
}

/* In the child, between clone() and execve(). It shares the agent's memory (CLONE_VM), so
 * it only makes system calls and never returns. */
__attribute__((noreturn)) static void child(const spawn_req *r, int fd0, int fd1, int fd2,
                                            int tty, int ep)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* Ignored dispositions survive execve: SIGPIPE would stay ignored otherwise. */
    sigaction(SIGPIPE, &dfl, NULL);
    sigaction(SIGCHLD, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setrlimit(RLIMIT_NOFILE, &orig_nofile);
    umask(022);
    if (setsid() < 0)
        child_fail(ep, STAGE_SETUP, errno, r);
    if (tty >= 0 && ioctl(tty, TIOCSCTTY, 0) < 0)
        child_fail(ep, STAGE_SETUP, errno, r);
    /* Every other descriptor of the agent is close-on-exec; these three become 0, 1, 2. */
    if (dup2(fd0, 0) < 0 || dup2(fd1, 1) < 0 || dup2(fd2, 2) < 0)
        child_fail(ep, STAGE_SETUP, errno, r);
    /* The image's USER: group first, while still root; no supplementary groups. */
    if (r->gid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)r->gid) < 0))
        child_fail(ep, STAGE_SETUP, errno, r);
    if (r->uid >= 0 && setuid((uid_t)r->uid) < 0)
        child_fail(ep, STAGE_SETUP, errno, r);
    if (r->cwd && chdir(r->cwd) < 0)
        child_fail(ep, STAGE_CHDIR, errno, r);
    child_fail(ep, STAGE_EXEC, exec_search(r->argv[0], r->argv, r->envp), r);
    _exit(127);
}

typedef struct {
    const spawn_req *r;
    int fd0, fd1, fd2, tty, ep;
} child_args;

static int child_main(void *arg)
{
    const child_args *a = arg;
    child(a->r, a->fd0, a->fd1, a->fd2, a->tty, a->ep);
}

#ifndef AGENT_USE_FORK
/* The child runs on this stack while the agent waits (CLONE_VFORK): one is enough. */
static char child_stack[128 * 1024] __attribute__((aligned(16)));
#endif

static int set_flags(int fd, int nonblock)
{
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -1;
    if (nonblock) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return -1;
    }
    return 0;
}

/* Start a process; 0 or an errno (pipes, pty, clone). Failures of chdir or execve are
 * written to errp_fd by the child; the pipe is close-on-exec, so EOF means execve
 * succeeded. The agent uses CLONE_VM | CLONE_VFORK like posix_spawn: copying its address
 * space for a fork() is what costs most under gVisor (several ms), and the child's
 * verdict is in the pipe by the time clone() returns. */
int spawn(const spawn_req *r, spawn_res *res)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, ep[2] = {-1, -1};
    int master = -1, slave = -1, e = 0;
    if (r->pty) {
        if (openpty(&master, &slave, NULL, NULL, &r->ws) < 0 || set_flags(master, 1) < 0 ||
            set_flags(slave, 0) < 0)
            e = errno;
    } else if (pipe2(in, O_CLOEXEC) < 0 ||
               (!r->entry && (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0))) {
        e = errno;
    }
    if (!e && !r->entry && pipe2(ep, O_CLOEXEC) < 0)
        e = errno;
    /* Only the agent's ends are non-blocking; the child's stay ordinary. */
    if (!e && !r->entry &&
        (set_flags(ep[0], 1) < 0 ||
         (!r->pty && (set_flags(in[1], 1) < 0 || set_flags(out[0], 1) < 0 ||
                      set_flags(err[0], 1) < 0))))
        e = errno;
    pid_t pid = -1;
    if (!e) {
        child_args a = {r, in[0], out[1], err[1], -1, ep[1]};
        if (r->pty)
            a = (child_args){r, slave, slave, slave, slave, ep[1]};
        else if (r->entry)
            a = (child_args){r, in[0], 2, 2, -1, -1};
        /* No handler of ours may run in the child (it would share our memory): signals
         * stay blocked until the child has reset them. */
        sigset_t all, saved;
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, &saved);
#ifdef AGENT_USE_FORK /* for sanitizer builds, which cannot run a CLONE_VM child */
        pid = fork();
        if (pid == 0)
            child_main(&a);
#else
        pid = clone(child_main, child_stack + sizeof child_stack,
                    CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
#endif
        if (pid < 0)
            e = errno;
        sigprocmask(SIG_SETMASK, &saved, NULL);
    }
    /* The child's ends, and the entrypoint's empty stdin's write end. */
    close_fd(&slave);
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&ep[1]);
    if (r->entry)
        close_fd(&in[1]);
    if (e) {
        close_fd(&master);
        close_fd(&in[1]);
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&ep[0]);
        return e;
    }
    res->pid = pid;
    res->in_fd = r->pty ? master : in[1];
    res->out_fd = r->pty ? master : out[0];
    res->err_fd = err[0];
    res->errp_fd = ep[0];
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Exec channels                                                                         */
/* ------------------------------------------------------------------------------------ */

static char *dup_limited(const char *s)
{
    size_t n = strnlen(s, PATH_LIMIT);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Reads one JSON array of strings into a NULL-terminated vector (pointing into the
 * arena). NULL if the member is not such an array (absent gives an empty vector). */
static char **string_vector(const jv *o, const char *key, size_t *count)
{
    const jv *a = jget(o, key);
    size_t n = 0;
    if (a && a->t != J_ARR)
        return NULL;
    for (const jv *v = a ? a->kid : NULL; v; v = v->next, n++)
        if (!cstring_ok(v))
            return NULL;
    char **vec = malloc((n + 1) * sizeof *vec);
    if (!vec)
        return NULL;
    n = 0;
    for (const jv *v = a ? a->kid : NULL; v; v = v->next)
        vec[n++] = v->s;
    vec[n] = NULL;
    *count = n;
    return vec;
}

/* The child has either exec'd (EOF on the error pipe) or reported why it could not.
 * Once it has exited, no answer means it exec'd. */
void resolve_start(chan *c, int exited)
{
    int msg[2];
    ssize_t n;
    do
        n = read(c->errp_fd, msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN && !exited)
        return; /* not decided yet */
    close_fd(&c->errp_fd);
    if (n == (ssize_t)sizeof msg) {
        const char *what = msg[0] == STAGE_CHDIR ? "cannot change directory to"
                         : msg[0] == STAGE_EXEC  ? "cannot execute"
                                                 : "cannot set up the process for";
        const char *arg = msg[0] == STAGE_CHDIR ? c->cwd : c->argv0;
        emit_error(c->id, msg[1], what, arg, arg ? strlen(arg) : 0);
        chan_forget(c); /* the child is exiting and started nothing; reaped as an orphan */
        return;
    }
    sb b = {0};
    sb_fmt(&b, "{\"pid\":%d}", (int)c->pid);
    emit_sb(T_STARTED, c->id, &b);
    c->state = S_RUNNING;
}

void do_exec(uint32_t ch, const jv *req)
{
    size_t argc = 0, envc = 0;
    char **argv = string_vector(req, "argv", &argc);
    char **envp = string_vector(req, "env", &envc);
    const jv *cwd = jget(req, "cwd");
    long cols, rows, uid, gid;
    int pty;
    spawn_req r;
    memset(&r, 0, sizeof r);
    if (!argv || !argc || !envp || (cwd && !cstring_ok(cwd)) || jbool(req, "pty", 0, &pty) ||
        jint(req, "cols", 0, 65535, 80, &cols) || jint(req, "rows", 0, 65535, 24, &rows) ||
        jint(req, "uid", -1, 2147483647L, -1, &uid) ||
        jint(req, "gid", -1, 2147483647L, -1, &gid)) {
        emit_bad(ch, "bad EXEC request (argv: non-empty list of strings, env: list "
                   "of strings, cwd: string, pty: bool, cols/rows: 0..65535, uid/gid: "
                   "0..2^31-1)", NULL, 0);
        goto out;
    }
    r.uid = uid;
    r.gid = gid;
    r.argv = argv;
    r.envp = envp;
    r.cwd = cwd ? cwd->s : "/";
    r.pty = pty;
    r.ws.ws_col = (unsigned short)cols;
    r.ws.ws_row = (unsigned short)rows;
    chan *c = new_chan(ch, K_EXEC);
    if (!c) {
        emit_error(ch, ENOMEM, "too many open channels", NULL, 0);
        goto out;
    }
    c->pty = pty;
    c->argv0 = dup_limited(argv[0]);
    c->cwd = dup_limited(r.cwd);
    spawn_res res;
    int e = spawn(&r, &res);
    if (e) {
        emit_error(ch, e, "cannot start", argv[0], strlen(argv[0]));
        chan_abort(c);
        goto out;
    }
    c->pid = res.pid;
    c->state = S_STARTING;
    c->in_fd = res.in_fd;
    c->out_fd = res.out_fd;
    c->err_fd = res.err_fd;
    c->errp_fd = res.errp_fd;
    resolve_start(c, 0); /* already decided, thanks to CLONE_VFORK: STARTED or ERROR */
out:
    free(argv);
    free(envp);
}

/* Read one chunk of process output within the window. Returns 0, or -1 at EOF/error
 * (the descriptor is then closed). */
int pump_output(chan *c, int stream)
{
    int *fd = stream ? &c->err_fd : &c->out_fd;
    size_t want = c->window < CHUNK ? (size_t)c->window : CHUNK;
    if (!want)
        return 0;
    unsigned char buf[CHUNK];
    ssize_t n;
    do
        n = read(*fd, buf, want);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        emit(stream ? T_STDERR : T_STDOUT, c->id, buf, (size_t)n);
        c->window -= (uint64_t)n;
        return 0;
    }
    if (n < 0 && errno == EAGAIN)
        return 0;
    /* EOF, or EIO on a pty master once no process holds the terminal. */
    if (c->pty)
        c->in_fd = -1;
    close_fd(fd);
    return -1;
}

void pump_stdin(chan *c)
{
    while (c->in_fd >= 0 && c->inq.len > c->inq_off) {
        ssize_t n = write(c->in_fd, c->inq.p + c->inq_off, c->inq.len - c->inq_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            /* The process closed its stdin (EPIPE) or the terminal is gone: nothing more
             * will be read, so the buffer goes. */
            sb_free(&c->inq);
            c->inq_off = 0;
            if (!c->pty)
                close_fd(&c->in_fd);
            return;
        }
        c->inq_off += (size_t)n;
    }
    c->inq.len = c->inq_off = 0;
    if (c->stdin_eof && !c->pty)
        close_fd(&c->in_fd);
}

void on_stdin(chan *c, const unsigned char *p, size_t n)
{
    if (c->in_fd < 0 || !n)
        return;
    if (c->inq.len - c->inq_off + n > STDIN_MAX) {
        if (!c->stdin_dropped)
            logmsg("channel %u: the process does not read its stdin; dropping input", c->id);
        c->stdin_dropped = 1;
        return;
    }
    if (c->inq_off > c->inq.len / 2) { /* compact before growing */
        memmove(c->inq.p, c->inq.p + c->inq_off, c->inq.len - c->inq_off);
        c->inq.len -= c->inq_off;
        c->inq_off = 0;
    }
    sb_put(&c->inq, p, n);
    if (c->inq.oom) {
        logmsg("out of memory: dropping stdin of channel %u", c->id);
        sb_free(&c->inq);
        c->inq_off = 0;
    }
    pump_stdin(c); /* most processes are waiting for it: no need to wait for poll */
}

/* Called when waitpid() reports the exec's process. What the pipes hold now is kept (up
 * to EXIT_DRAIN_MAX) and sent within the window; then EXIT. Pipes still held open by
 * background processes are closed here, so they cannot delay the EXIT. */
void exec_exited(chan *c, int code)
{
    if (c->state == S_STARTING) {
        resolve_start(c, 1);
        if (c->dead)
            return;
    }
    c->state = S_EXITED; /* reaped: its PID must not be signalled any more */
    c->code = code;
    size_t kept = 0;
    for (int s = 0; s < 2; s++) {
        int fd = s ? c->err_fd : c->out_fd;
        while (fd >= 0 && kept < EXIT_DRAIN_MAX) {
            char buf[CHUNK];
            size_t want = EXIT_DRAIN_MAX - kept < CHUNK ? EXIT_DRAIN_MAX - kept : CHUNK;
            ssize_t n = read(fd, buf, want);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            sb_put(&c->pend[s], buf, (size_t)n);
            kept += (size_t)n;
        }
    }
    close_exec_fds(c);
    sb_free(&c->inq);
}

/* Send the kept output of an exited exec within its window, then EXIT. Returns 1 if it
 * is waiting only for the output queue to drain. */
int exec_finish(chan *c)
{
    for (int s = 0; s < 2; s++) {
        while (c->pend_off[s] < c->pend[s].len) {
            if (!c->window)
                return 0;
            if (oq_bytes >= OUTQ_HIGH)
                return 1;
            size_t n = c->pend[s].len - c->pend_off[s];
            if (n > CHUNK)
                n = CHUNK;
            if (n > c->window)
                n = (size_t)c->window;
            emit(s ? T_STDERR : T_STDOUT, c->id, c->pend[s].p + c->pend_off[s], n);
            c->pend_off[s] += n;
            c->window -= n;
        }
    }
    sb b = {0};
    sb_fmt(&b, "{\"exit_code\":%d}", c->code);
    emit_sb(T_EXIT, c->id, &b);
    chan_forget(c); /* background processes of its session live on, as documented */
    return 0;
}

int decode_status(int st)
{
    return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}
