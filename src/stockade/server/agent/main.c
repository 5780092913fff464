/*
 * stockade-agent: the init process (PID 1) of every Stockade sandbox.
 *
 * It serves the framed protocol described in docs/agent-protocol.md on fd 0 (requests)
 * and fd 1 (replies): execs with pipes or a terminal, and file operations. fd 2 is the
 * sandbox log. It must work in any image (no shell, no libraries), so it is a static
 * C program with nothing but libc.
 *
 * Design: one thread, one poll() loop, every descriptor non-blocking. Signals only write
 * a byte to a self-pipe. Replies wait in an output queue while the channel is full.
 * Channels are freed only at the end of a loop iteration (sweep_channels), so that
 * pointers taken from the poll set stay valid while the events are handled.
 *
 * Files: this one reads and dispatches frames and runs the loop; frame.c encodes frames
 * and queues them, json.c writes and parses JSON, channel.c holds the channel table,
 * exec.c starts processes and serves execs, files.c the file operations, watch.c file
 * watches (inotify); agent.c has logging and growable buffers.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o stockade-agent *.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "exec.h"
#include "files.h"
#include "frame.h"
#include "json.h"
#include "watch.h"

/* ------------------------------------------------------------------------------------ */
/* Frame dispatch                                                                        */
/* ------------------------------------------------------------------------------------ */

static void do_hello(const unsigned char *p, size_t n)
{
    if (n != 16) {
        emit_bad(0, "bad HELLO (the nonce must be 16 bytes)", NULL, 0);
        return;
    }
    for (size_t i = 0; i < nchans; i++)
        chan_abort(chans[i]);
    oq_clear(); /* including a frame half written: the server skips to the magic */
    unsigned char ack[128];
    memcpy(ack, MAGIC, 16);
    memcpy(ack + 16, p, 16);
    int j = snprintf((char *)ack + 32, sizeof ack - 32, "{\"version\":1,\"pid\":%d}",
                     (int)getpid());
    emit(T_HELLO_ACK, 0, ack, 32 + (size_t)j);
}

static int is_opening(int type)
{
    return type == T_EXEC || type == T_FILE_READ || type == T_FILE_WRITE ||
           type == T_FILE_STAT || type == T_FILE_LIST || type == T_FILE_MKDIR ||
           type == T_FILE_REMOVE || type == T_FILE_RENAME || type == T_FILE_CHMOD ||
           type == T_FILE_WATCH;
}

static void open_channel(int type, uint32_t ch, const unsigned char *p, size_t n)
{
    if (ch == 0) {
        emit_bad(0, "channel 0 is the control channel; requests need another",
                   NULL, 0);
        return;
    }
    if (find_chan(ch)) {
        logmsg("channel %u is already open; request of type %d ignored", ch, type);
        return;
    }
    arena a = {0};
    const jv *req = jparse_object(p, n, &a);
    const jv *path;
    if (!req)
        emit_bad(ch, "bad request: the payload is not a JSON object", NULL, 0);
    else if (type == T_EXEC)
        do_exec(ch, req);
    else if ((path = req_path(ch, req))) {
        switch (type) {
        case T_FILE_READ: do_file_read(ch, path); break;
        case T_FILE_WRITE: do_file_write(ch, path, req); break;
        case T_FILE_STAT: do_file_stat(ch, path); break;
        case T_FILE_LIST: do_file_list(ch, path); break;
        case T_FILE_MKDIR: do_file_mkdir(ch, path, req); break;
        case T_FILE_REMOVE: do_file_remove(ch, path, req); break;
        case T_FILE_RENAME: do_file_rename(ch, path, req); break;
        case T_FILE_CHMOD: do_file_chmod(ch, path, req); break;
        case T_FILE_WATCH: do_file_watch(ch, path, req); break;
        }
    }
    afree(&a);
}

static void on_resize(chan *c, const unsigned char *p, size_t n)
{
    arena a = {0};
    const jv *req = jparse_object(p, n, &a);
    long cols, rows;
    if (!req || jint(req, "cols", 0, 65535, 80, &cols) || jint(req, "rows", 0, 65535, 24, &rows))
        chan_bad(c, "bad RESIZE request (cols/rows: 0..65535)");
    else if (c->pty && c->out_fd >= 0) {
        struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
        ioctl(c->out_fd, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH */
    }
    afree(&a);
}

static void on_signal_req(chan *c, const unsigned char *p, size_t n)
{
    arena a = {0};
    const jv *req = jparse_object(p, n, &a);
    long sig;
    if (!req || jint(req, "signal", 1, NSIG - 1, -1, &sig) || sig < 0)
        chan_bad(c, "bad SIGNAL request (signal: 1..64)");
    else if (c->pid > 0 && kill(-c->pid, (int)sig) < 0 && errno == ESRCH &&
             c->state != S_EXITED)
        kill(c->pid, (int)sig); /* before setsid(), the group does not exist yet */
    afree(&a);
}

static void handle_frame(int type, uint32_t ch, const unsigned char *p, size_t n)
{
    if (type == T_HELLO) {
        if (ch == 0)
            do_hello(p, n);
        return;
    }
    if (is_opening(type)) {
        open_channel(type, ch, p, n);
        return;
    }
    chan *c = find_chan(ch);
    if (!c)
        return; /* unknown channel, or one the agent already finished: ignored */
    int ex = c->kind == K_EXEC;
    switch (type) {
    case T_STDIN:
        if (ex)
            on_stdin(c, p, n);
        break;
    case T_STDIN_EOF:
        if (ex && !c->pty) {
            c->stdin_eof = 1;
            pump_stdin(c);
        }
        break;
    case T_RESIZE:
        if (ex)
            on_resize(c, p, n);
        break;
    case T_SIGNAL:
        if (ex)
            on_signal_req(c, p, n);
        break;
    case T_WINDOW:
        if (n != 4) {
            chan_bad(c, "bad WINDOW frame (the payload must be a u32)");
        } else if (ex || c->kind == K_READ || c->kind == K_WATCH) {
            c->window += be32(p);
            if (c->window > ((uint64_t)1 << 48))
                c->window = (uint64_t)1 << 48;
        }
        break;
    case T_DATA:
        if (c->kind == K_WRITE)
            on_file_data(c, p, n);
        break;
    case T_END:
        if (c->kind == K_WRITE)
            on_file_end(c);
        break;
    case T_CLOSE:
        chan_abort(c);
        break;
    default:
        break; /* unknown types: forward compatibility */
    }
}

/* ------------------------------------------------------------------------------------ */
/* Input: frames from fd 0                                                               */
/* ------------------------------------------------------------------------------------ */

static unsigned char inbuf[INBUF_CAP];
static size_t inlen;
static int in_garbage; /* inside a run of skipped bytes (one ERROR per run) */
static int input_eof;

static void skip_garbage(void)
{
    if (!in_garbage)
        emit_bad(0, "garbage on the channel (not a frame); skipping to the next "
                   "frame", NULL, 0);
    in_garbage = 1;
}

static void parse_input(void)
{
    size_t p = 0;
    while (p < inlen) {
        unsigned char b = inbuf[p];
        if (b == 0) { /* padding (the resynchronisation preamble) */
            p++;
            in_garbage = 0;
            continue;
        }
        if (b != FRAME_START) {
            skip_garbage();
            p++;
            continue;
        }
        if (inlen - p < 5)
            break;
        uint32_t len = be32(inbuf + p + 1);
        if (len > MAX_PAYLOAD) { /* not a real header: skip its start byte like garbage */
            skip_garbage();
            p++;
            continue;
        }
        if (inlen - p < HDR + (size_t)len)
            break;
        in_garbage = 0;
        handle_frame(inbuf[p + 5], be32(inbuf + p + 6), inbuf + p + HDR, len);
        p += HDR + len;
        /* Send each answer as soon as it is made (a non-blocking write): a batch of
         * EXECs, each waiting for its child's execve, can take seconds on a crowded
         * host, and the server must hear every STARTED as it comes, not all at the end. */
        flush_out();
    }
    memmove(inbuf, inbuf + p, inlen - p);
    inlen -= p;
}

static void read_input(void)
{
    for (int round = 0; round < 16 && !input_eof; round++) {
        ssize_t n = read(0, inbuf + inlen, INBUF_CAP - inlen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            /* The sandbox's FIFO never ends (the sandbox holds its write end too); a pipe
             * does, outside a sandbox. Either way no request can come any more. */
            logmsg("request channel closed (%s)", n < 0 ? strerror(errno) : "EOF");
            input_eof = 1;
            return;
        }
        inlen += (size_t)n;
        parse_input();
    }
}

/* ------------------------------------------------------------------------------------ */
/* Signals, reaping and the main loop                                                    */
/* ------------------------------------------------------------------------------------ */

static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t got_term;
static pid_t entry_pid = -1;
static int entry_code = -1;

static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGTERM)
        got_term = 1;
    char b = (char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {
    } /* full pipe: a wakeup is already pending */
    errno = saved;
}

/* waitpid(-1): the agent is the reaper of every orphan of the sandbox. */
static void reap(void)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        int code = decode_status(st);
        if (pid == entry_pid) {
            entry_code = code;
            entry_pid = -1;
            continue;
        }
        for (size_t i = 0; i < nchans; i++) {
            chan *c = chans[i];
            if (!c->dead && c->kind == K_EXEC && c->pid == pid && c->state != S_EXITED) {
                exec_exited(c, code);
                break;
            }
        }
    }
}

static void kill_all_channels(void)
{
    for (size_t i = 0; i < nchans; i++)
        chan_abort(chans[i]);
    sweep_channels();
}

/* Flush what we can within a short bounded time: the agent is about to exit, and nobody
 * may be reading the channel. */
static void final_flush(void)
{
    for (int i = 0; i < 200 && oq_head; i++) {
        flush_out();
        if (!oq_head)
            break;
        struct pollfd pfd = {.fd = 1, .events = POLLOUT};
        poll(&pfd, 1, 10);
    }
}

static void agent_exit(int code)
{
    kill_all_channels();
    final_flush();
    exit(code);
}

/* Entries of the poll set beyond the fixed ones: which channel and which of its fds. */
enum { W_IN, W_OUT, W_ERR, W_ERRP, W_FILE };
typedef struct {
    chan *c;
    int which;
} pslot;

static int chan_fd(const chan *c, int which)
{
    switch (which) {
    case W_IN: return c->in_fd;
    case W_OUT: return c->out_fd;
    case W_ERR: return c->err_fd;
    case W_ERRP: return c->errp_fd;
    default: return c->fd;
    }
}

static struct pollfd *pfds;
static pslot *pslots;
static size_t pcap;

static int add_poll(size_t *k, int fd, short events, chan *c, int which)
{
    if (*k == pcap) {
        size_t cap = pcap ? pcap * 2 : 64;
        struct pollfd *np = realloc(pfds, cap * sizeof *np);
        if (np)
            pfds = np;
        pslot *ns = np ? realloc(pslots, cap * sizeof *ns) : NULL;
        if (ns)
            pslots = ns;
        if (!np || !ns)
            return -1; /* served at a later iteration */
        pcap = cap;
    }
    pfds[*k] = (struct pollfd){.fd = fd, .events = events};
    pslots[*k] = (pslot){c, which};
    (*k)++;
    return 0;
}

static void handle_chan_event(chan *c, int which, short rev)
{
    if (c->dead || !rev)
        return;
    switch (which) {
    case W_ERRP: resolve_start(c, 0); break;
    case W_OUT: pump_output(c, 0); break;
    case W_ERR: pump_output(c, 1); break;
    case W_IN: pump_stdin(c); break;
    case W_FILE:
        if (c->kind == K_WATCH)
            pump_watch(c);
        else
            pump_file_read(c);
        break;
    }
}

/* Work that needs no event: output kept at exit, listings. Returns 1 if some of it waits
 * only for the output queue to drain (then poll must not sleep once it has). */
static int do_work(void)
{
    int blocked = 0;
    for (size_t i = 0; i < nchans; i++) {
        chan *c = chans[i];
        if (c->dead)
            continue;
        if (c->kind == K_EXEC && c->state == S_EXITED)
            blocked |= exec_finish(c);
        else if (c->kind == K_LIST) {
            while (!c->dead && oq_bytes < OUTQ_HIGH)
                list_step(c);
            blocked |= !c->dead;
        } else if (c->kind == K_WATCH) {
            /* Raw events wait in the channel's buffer until the window allows. */
            while (watch_pending(c) && c->window >= WATCH_NEED && oq_bytes < OUTQ_HIGH)
                watch_step(c);
            blocked |= watch_pending(c) && c->window >= WATCH_NEED;
        }
    }
    return blocked;
}

static void setup(void)
{
    /* A write to a reader that went away must be an error, never a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    /* fds 0-2 must exist, or pipes created later would land on them. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
            logmsg("cannot open /dev/null for fd %d", fd);
    /* Whatever else was inherited must not leak into the processes we start. */
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int self = dirfd(d);
        struct dirent *de;
        while ((de = readdir(d))) {
            int fd = atoi(de->d_name);
            if (fd > 2 && fd != self)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        closedir(d);
    }
    umask(0); /* FILE_WRITE and FILE_MKDIR modes are exact; children get 022 back */
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1); /* outside a sandbox, still reap our orphans */
    getrlimit(RLIMIT_NOFILE, &orig_nofile);
    struct rlimit raised = orig_nofile;
    raised.rlim_cur = raised.rlim_max;
    setrlimit(RLIMIT_NOFILE, &raised);
    pcap = 64; /* the fixed entries of the poll set must never fail to fit */
    pfds = malloc(pcap * sizeof *pfds);
    pslots = malloc(pcap * sizeof *pslots);
    if (!pfds || !pslots || pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        logmsg("cannot set up: %s", strerror(errno));
        exit(1);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    for (int fd = 0; fd < 2; fd++) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            logmsg("cannot make fd %d non-blocking: %s", fd, strerror(errno));
    }
}

static void start_entrypoint(char **argv)
{
    spawn_req r;
    memset(&r, 0, sizeof r);
    r.argv = argv;
    r.envp = environ;
    r.entry = 1;
    r.uid = r.gid = -1;
    spawn_res res;
    int e = spawn(&r, &res);
    if (e) {
        logmsg("cannot start the entrypoint %s: %s", argv[0], strerror(e));
        exit(127);
    }
    entry_pid = res.pid;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--") || argc < 3)) {
        fprintf(stderr, "usage: stockade-agent [-- entrypoint [args...]]\n");
        return 2;
    }
    setup();
    int have_entry = argc > 2;
    if (have_entry)
        start_entrypoint(argv + 2);
    for (;;) {
        flush_out();
        int blocked = do_work();
        flush_out();
        sweep_channels();

        size_t k = 0;
        add_poll(&k, sig_pipe[0], POLLIN, NULL, 0);
        int read_requests = !input_eof && oq_bytes < OUTQ_STOP_INPUT;
        add_poll(&k, read_requests ? 0 : -1, POLLIN, NULL, 0);
        add_poll(&k, oq_head ? 1 : -1, POLLOUT, NULL, 0);
        int produce = oq_bytes < OUTQ_HIGH;
        for (size_t i = 0; i < nchans; i++) {
            chan *c = chans[i];
            if (c->kind == K_EXEC) {
                if (c->state == S_STARTING && c->errp_fd >= 0)
                    add_poll(&k, c->errp_fd, POLLIN, c, W_ERRP);
                if (c->inq.len > c->inq_off && c->in_fd >= 0)
                    add_poll(&k, c->in_fd, POLLOUT, c, W_IN);
                /* Without window the descriptor stays out of the set altogether: a pipe
                 * at EOF would otherwise report POLLHUP forever. */
                if (c->state == S_RUNNING && c->window && produce) {
                    if (c->out_fd >= 0)
                        add_poll(&k, c->out_fd, POLLIN, c, W_OUT);
                    if (c->err_fd >= 0)
                        add_poll(&k, c->err_fd, POLLIN, c, W_ERR);
                }
            } else if (c->kind == K_READ && c->window && produce) {
                add_poll(&k, c->fd, POLLIN, c, W_FILE);
            } else if (c->kind == K_WATCH) {
                /* Always drained: pump_watch keeps or drops, within WATCH_QUEUE. */
                add_poll(&k, c->fd, POLLIN, c, W_FILE);
            }
        }
        int timeout = blocked && oq_bytes < OUTQ_HIGH ? 0 : -1;
        int n = poll(pfds, k, timeout);
        if (n < 0) {
            if (errno != EINTR)
                logmsg("poll: %s", strerror(errno));
            continue;
        }
        if (pfds[0].revents) {
            char drain[64];
            while (read(sig_pipe[0], drain, sizeof drain) > 0) {
            }
            reap();
            if (got_term) {
                got_term = 0;
                if (entry_pid > 0) {
                    kill(-entry_pid, SIGTERM);
                    kill(entry_pid, SIGTERM);
                } else if (!have_entry) {
                    agent_exit(0);
                }
            }
        }
        for (size_t i = 3; i < k; i++) {
            chan *c = pslots[i].c;
            /* The descriptor may have been closed since (the process exited). */
            if (pfds[i].revents && !c->dead && chan_fd(c, pslots[i].which) == pfds[i].fd)
                handle_chan_event(c, pslots[i].which, pfds[i].revents);
        }
        if (pfds[1].revents)
            read_input();
        if (have_entry && entry_pid < 0 && entry_code >= 0) {
            char js[64];
            int len = snprintf(js, sizeof js, "{\"exit_code\":%d}", entry_code);
            emit(T_ENTRYPOINT_EXIT, 0, js, (size_t)len);
            agent_exit(entry_code);
        }
        if (input_eof && !have_entry)
            agent_exit(0); /* outside a sandbox: nobody can send requests any more */
    }
}
