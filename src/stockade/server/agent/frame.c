/* stockade-agent's frames: their encoding, the output queue and ERROR replies (frame.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "agent.h"
#include "frame.h"
#include "json.h"

/* The u32 fields of a frame header are big-endian. */
uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* ------------------------------------------------------------------------------------ */
/* Output queue                                                                          */
/* ------------------------------------------------------------------------------------ */

ofr *oq_head;
static ofr *oq_tail;
size_t oq_bytes; /* bytes not yet written */
static int out_broken;  /* fd 1 failed for good (only outside a sandbox: a closed pipe) */

void emit(int type, uint32_t ch, const void *payload, size_t n)
{
    if (n > MAX_PAYLOAD) {
        logmsg("internal: dropping a %zu-byte frame of type %d", n, type);
        return;
    }
    ofr *f = malloc(sizeof *f + HDR + n);
    if (!f) {
        logmsg("out of memory: dropping a frame of type %d on channel %u", type, ch);
        return;
    }
    f->next = NULL;
    f->len = HDR + n;
    f->off = 0;
    f->d[0] = FRAME_START;
    put_be32(f->d + 1, (uint32_t)n);
    f->d[5] = (unsigned char)type;
    put_be32(f->d + 6, ch);
    if (n)
        memcpy(f->d + HDR, payload, n);
    if (oq_tail)
        oq_tail->next = f;
    else
        oq_head = f;
    oq_tail = f;
    oq_bytes += f->len;
}

void emit_sb(int type, uint32_t ch, sb *b)
{
    if (b->oom)
        logmsg("out of memory: dropping a frame of type %d on channel %u", type, ch);
    else
        emit(type, ch, b->p, b->len);
    sb_free(b);
}

/* ERROR {"errno", "message"}; the message is "<what> <path>: <strerror>". Paths are cut
 * to PATH_LIMIT bytes so that the frame stays small whatever the request held. */
static void emit_err(uint32_t ch, int err, const char *what, const char *path, size_t plen,
                     int with_strerror)
{
    sb msg = {0}, b = {0};
    sb_str(&msg, what);
    if (path) {
        sb_str(&msg, " ");
        sb_put(&msg, path, plen > PATH_LIMIT ? PATH_LIMIT : plen);
    }
    if (with_strerror) {
        sb_str(&msg, ": ");
        sb_str(&msg, strerror(err));
    }
    sb_fmt(&b, "{\"errno\":%d,\"message\":", err);
    sb_jstr(&b, msg.p ? msg.p : "", msg.len);
    sb_str(&b, "}");
    if (msg.oom)
        b.oom = 1;
    sb_free(&msg);
    emit_sb(T_ERROR, ch, &b);
}

void emit_error(uint32_t ch, int err, const char *what, const char *path, size_t plen)
{
    emit_err(ch, err, what, path, plen, 1);
}

/* A malformed request (EINVAL): the message says what was expected. */
void emit_bad(uint32_t ch, const char *what, const char *path, size_t plen)
{
    emit_err(ch, EINVAL, what, path, plen, 0);
}

void oq_clear(void)
{
    while (oq_head) {
        ofr *n = oq_head->next;
        free(oq_head);
        oq_head = n;
    }
    oq_tail = NULL;
    oq_bytes = 0;
}

/* Write as much of the queue as fd 1 takes now, several frames per system call. */
void flush_out(void)
{
    while (oq_head) {
        struct iovec iov[64];
        int k = 0;
        for (ofr *f = oq_head; f && k < 64; f = f->next, k++) {
            iov[k].iov_base = f->d + f->off;
            iov[k].iov_len = f->len - f->off;
        }
        ssize_t n = writev(1, iov, k);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            /* Only a pipe whose reader is gone gets here (the sandbox's FIFO always has a
             * reader: the sandbox itself). Nobody can read these frames any more. */
            if (!out_broken)
                logmsg("output channel failed (%s); dropping output", strerror(errno));
            out_broken = 1;
            oq_clear();
            return;
        }
        size_t left = (size_t)n;
        while (left && oq_head) {
            ofr *f = oq_head;
            size_t rest = f->len - f->off;
            if (left < rest) {
                f->off += left;
                oq_bytes -= left;
                break;
            }
            left -= rest;
            oq_bytes -= rest;
            oq_head = f->next;
            if (!oq_head)
                oq_tail = NULL;
            free(f);
        }
    }
}
