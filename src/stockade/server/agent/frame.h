/*
 * The frames of stockade-agent's protocol (docs/agent-protocol.md): constants and limits,
 * the big-endian u32 of a header, and the queue of frames waiting to be written to fd 1.
 */
#ifndef STOCKADE_FRAME_H
#define STOCKADE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "agent.h"

/* ------------------------------------------------------------------------------------ */
/* Protocol constants and limits                                                         */
/* ------------------------------------------------------------------------------------ */

#define FRAME_START 0xA5
#define HDR 10                          /* start byte, u32 length, u8 type, u32 channel */
#define MAX_PAYLOAD (1024u * 1024u)
#define DEFAULT_WINDOW 262144u
#define CHUNK 65536u                    /* largest output frame we produce from a pipe */
#define INBUF_CAP (2u * 1024u * 1024u)  /* holds any incomplete frame plus one read */
#define OUTQ_HIGH (1024u * 1024u)       /* above this, produce no more output... */
#define OUTQ_STOP_INPUT (8u * 1024u * 1024u) /* ...and above this, read no more requests */
#define STDIN_MAX (16u * 1024u * 1024u) /* per-channel stdin buffer; excess is dropped */
#define EXIT_DRAIN_MAX (1024u * 1024u)  /* output kept from the pipes when a child exits */
#define LIST_MAX 100000
#define LIST_BATCH (896u * 1024u) /* FILE_LIST: start a new frame past this (entries < 64 KiB) */
#define PATH_LIMIT 4096                 /* longer request paths: ENAMETOOLONG */
#define MAX_CHANNELS 65536
#define JSON_MAX_DEPTH 32
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAGIC "STOCKADE-AGENT-1"

enum {
    T_HELLO = 1, T_HELLO_ACK = 2, T_EXEC = 3, T_STARTED = 4, T_STDIN = 5, T_STDIN_EOF = 6,
    T_RESIZE = 7, T_SIGNAL = 8, T_WINDOW = 9, T_STDOUT = 10, T_STDERR = 11, T_EXIT = 12,
    T_ERROR = 15, T_FILE_READ = 20, T_DATA = 21, T_END = 22, T_FILE_WRITE = 23,
    T_READY = 24, T_RESULT = 25, T_FILE_STAT = 26, T_FILE_LIST = 27, T_FILE_MKDIR = 28,
    T_FILE_REMOVE = 29, T_ENTRYPOINT_EXIT = 30, T_CLOSE = 31,
    T_FILE_RENAME = 32, T_FILE_CHMOD = 33, T_FILE_WATCH = 34,
};

/* The u32 fields of a header are big-endian. */
uint32_t be32(const unsigned char *p);

/* The output queue: frames waiting until fd 1 takes them. */
typedef struct ofr {
    struct ofr *next;
    size_t len, off;
    unsigned char d[];
} ofr;

extern ofr *oq_head;
extern size_t oq_bytes; /* bytes not yet written */

void emit(int type, uint32_t ch, const void *payload, size_t n);
void emit_sb(int type, uint32_t ch, sb *b);
/* ERROR frames: "<what> <path>: <strerror(err)>", or for a malformed request (EINVAL)
 * "<what> <path>"; see emit_err. */
void emit_error(uint32_t ch, int err, const char *what, const char *path, size_t plen);
void emit_bad(uint32_t ch, const char *what, const char *path, size_t plen);
void oq_clear(void);
void flush_out(void);

#endif
