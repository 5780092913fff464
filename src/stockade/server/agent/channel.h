/*
 * stockade-agent's open channels: an exec, a file being read or written, or a listing.
 * Forgetting a channel releases its resources at once; the struct itself is freed by
 * sweep_channels() at the end of a loop iteration, so pointers to it stay valid until then.
 */
#ifndef STOCKADE_CHANNEL_H
#define STOCKADE_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.h"

enum { K_EXEC, K_READ, K_WRITE, K_LIST, K_WATCH };
enum { S_STARTING, S_RUNNING, S_EXITED };

typedef struct chan {
    uint32_t id;
    int kind;
    int dead; /* forgotten; freed by sweep_channels at the end of the loop iteration */
    uint64_t window;
    /* K_EXEC */
    pid_t pid;
    int state;
    int pty;
    int in_fd, out_fd, err_fd, errp_fd; /* with a pty, in_fd == out_fd == the master */
    int stdin_eof;
    int stdin_dropped;
    sb inq; /* STDIN bytes the process has not read yet, from inq_off */
    size_t inq_off;
    int code;
    sb pend[2]; /* stdout and stderr drained when the process exited, not sent yet */
    size_t pend_off[2];
    char *argv0, *cwd; /* for the ERROR message if the exec fails */
    /* K_READ, K_WRITE */
    int fd;
    char *path;
    size_t plen;
    /* K_LIST */
    int dirfd;
    char **names;
    size_t nnames, idx;
    /* K_WATCH (watch.c): fd is the inotify descriptor, inq/inq_off its raw events not
     * sent yet, names[i] the directory of watch wds[i] (nnames of them, room for idx) */
    int *wds;
    int recursive, limited, overflowed;
} chan;

extern chan **chans;
extern size_t nchans;

chan *find_chan(uint32_t id);
chan *new_chan(uint32_t id, int kind);
void close_fd(int *fd);
void close_exec_fds(chan *c);
void chan_forget(chan *c);
void chan_abort(chan *c);
void sweep_channels(void);
void chan_fail(chan *c, int err, const char *what);
void chan_bad(chan *c, const char *what);

#endif
