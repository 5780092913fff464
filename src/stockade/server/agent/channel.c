/* stockade-agent's table of open channels (channel.h). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"
#include "frame.h"

/* ------------------------------------------------------------------------------------ */
/* Channels                                                                              */
/* ------------------------------------------------------------------------------------ */

chan **chans;
size_t nchans;

chan *find_chan(uint32_t id)
{
    for (size_t i = 0; i < nchans; i++)
        if (chans[i]->id == id && !chans[i]->dead)
            return chans[i];
    return NULL;
}

chan *new_chan(uint32_t id, int kind)
{
    if (nchans >= MAX_CHANNELS)
        return NULL;
    chan **grown = realloc(chans, (nchans + 1) * sizeof *chans);
    if (!grown)
        return NULL;
    chans = grown;
    chan *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->id = id;
    c->kind = kind;
    c->window = DEFAULT_WINDOW;
    c->in_fd = c->out_fd = c->err_fd = c->errp_fd = c->fd = c->dirfd = -1;
    chans[nchans++] = c;
    return c;
}

void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void close_exec_fds(chan *c)
{
    if (c->in_fd == c->out_fd)
        c->in_fd = -1; /* the pty master: one descriptor, closed once */
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    close_fd(&c->err_fd);
    close_fd(&c->errp_fd);
}

/* Forget a channel; its resources go now, the struct at the next sweep. */
void chan_forget(chan *c)
{
    close_exec_fds(c);
    close_fd(&c->fd);
    close_fd(&c->dirfd);
    c->dead = 1;
}

/* Forget a channel the server gave up (CLOSE, HELLO): an exec's whole process group gets
 * SIGKILL. Before the child's setsid() the group does not exist yet, hence the direct
 * kill as well. */
void chan_abort(chan *c)
{
    if (c->dead)
        return;
    if (c->kind == K_EXEC && c->pid > 0) {
        kill(-c->pid, SIGKILL);
        if (c->state != S_EXITED)
            kill(c->pid, SIGKILL);
    }
    chan_forget(c);
}

static void chan_free(chan *c)
{
    chan_abort(c);
    sb_free(&c->inq);
    sb_free(&c->pend[0]);
    sb_free(&c->pend[1]);
    free(c->argv0);
    free(c->cwd);
    free(c->path);
    for (size_t i = 0; i < c->nnames; i++)
        free(c->names[i]);
    free(c->names);
    free(c->wds);
    free(c);
}

void sweep_channels(void)
{
    size_t w = 0;
    for (size_t i = 0; i < nchans; i++) {
        if (chans[i]->dead)
            chan_free(chans[i]);
        else
            chans[w++] = chans[i];
    }
    nchans = w;
}

/* An ERROR is the last frame of its channel, so the channel ends with it. */
void chan_fail(chan *c, int err, const char *what)
{
    emit_error(c->id, err, what, c->path, c->plen);
    chan_abort(c);
}

void chan_bad(chan *c, const char *what)
{
    emit_bad(c->id, what, NULL, 0);
    chan_abort(c);
}
