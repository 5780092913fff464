/*
 * stockade-agent's JSON: strings and file info objects for replies, and a small strict
 * parser of request objects into an arena.
 */
#ifndef STOCKADE_JSON_H
#define STOCKADE_JSON_H

#include <stddef.h>
#include <sys/stat.h>

#include "agent.h"

void sb_jstr(sb *b, const char *s, size_t n);
void sb_info(sb *b, const char *path, size_t plen, const char *name, size_t nlen,
             const struct stat *st, const char *target, size_t tlen);

/* A request's values live in an arena, freed as a whole after each frame. */
typedef struct achunk {
    struct achunk *next;
    size_t used, cap;
} achunk;

typedef struct {
    achunk *head;
} arena;

void afree(arena *a);

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jv {
    int t;
    int b;
    double d;
    char *s; /* J_STR: decoded bytes, NUL-terminated (may also contain NULs: see n) */
    size_t n;
    const char *k; /* key, when this value is an object member */
    size_t kn;
    struct jv *kid, *next;
} jv;

jv *jparse_object(const unsigned char *p, size_t n, arena *a);
jv *jget(const jv *o, const char *key);
int jint(const jv *o, const char *key, long lo, long hi, long def, long *out);
int jbool(const jv *o, const char *key, int def, int *out);
int cstring_ok(const jv *v);

#endif
