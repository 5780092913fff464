/*
 * stockade-agent's processes: the entrypoint and execs are started with spawn(); an exec's
 * channel carries its stdin, its output within the window, and its exit.
 */
#ifndef STOCKADE_EXEC_H
#define STOCKADE_EXEC_H

#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "channel.h"
#include "json.h"

typedef struct {
    char **argv, **envp;
    const char *cwd; /* NULL: stay in the agent's directory */
    int pty;
    struct winsize ws;
    int entry; /* the entrypoint: stdin empty, stdout and stderr to the agent's log */
    long uid, gid; /* run as this user and group (-1: as the agent, root) */
} spawn_req;

typedef struct {
    pid_t pid;
    int in_fd, out_fd, err_fd, errp_fd;
} spawn_res;

extern struct rlimit orig_nofile; /* restored in children: the agent raises its own */

int spawn(const spawn_req *r, spawn_res *res);

void do_exec(uint32_t ch, const jv *req);
void resolve_start(chan *c, int exited);
int pump_output(chan *c, int stream);
void pump_stdin(chan *c);
void on_stdin(chan *c, const unsigned char *p, size_t n);
void exec_exited(chan *c, int code);
int exec_finish(chan *c);
int decode_status(int st);

#endif
