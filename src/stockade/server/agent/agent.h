/*
 * What every part of stockade-agent uses: logging to fd 2 and growable byte buffers.
 * Each .c file defines _GNU_SOURCE before any include.
 */
#ifndef STOCKADE_AGENT_H
#define STOCKADE_AGENT_H

#include <stddef.h>
#include <stdint.h>

__attribute__((format(printf, 1, 2))) void logmsg(const char *fmt, ...);

/* A byte buffer whose appends turn into no-ops once an allocation failed (oom), so that
 * builders need one check at the end instead of one per append. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sb;

void sb_reserve(sb *b, size_t extra);
void sb_put(sb *b, const void *d, size_t n);
void sb_str(sb *b, const char *s);
__attribute__((format(printf, 2, 3))) void sb_fmt(sb *b, const char *fmt, ...);
void sb_free(sb *b);

#endif
