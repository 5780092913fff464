/* stockade-agent's JSON: replies written into growable buffers, requests parsed (json.h). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent.h"
#include "frame.h"
#include "json.h"

/* ------------------------------------------------------------------------------------ */
/* JSON output                                                                           */
/* ------------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (strict: no overlongs, no surrogates, at most
 * U+10FFFF), or 0 if the byte at s does not start one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t need = c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
    if (!need || n < need)
        return 0;
    for (size_t i = 1; i < need; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0) ||
        (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))
        return 0;
    return need;
}

/* A JSON string for arbitrary bytes. Valid UTF-8 passes through; every byte that is not
 * part of a valid sequence becomes \udcXX, the lone surrogate that Python's
 * "surrogateescape" uses for it, so that any file name round-trips: the server gets
 * name.encode("utf-8", "surrogateescape") == the raw bytes, and json.dumps of that str
 * sends \udcXX back, which the parser below turns into the raw byte again. */
void sb_jstr(sb *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    sb_reserve(b, n + 2);
    sb_put(b, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes copied verbatim */
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        size_t k = c >= 0x20 && c != '"' && c != '\\' ? utf8_len(u + i, n - i) : 0;
        if (k) {
            i += k;
            continue;
        }
        sb_put(b, s + run, i - run);
        char esc[8];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            snprintf(esc, sizeof esc, c < 0x80 ? "\\u%04x" : "\\udc%02x", c);
            sb_put(b, esc, 6);
        }
        run = ++i;
    }
    sb_put(b, s + run, n - run);
    sb_put(b, "\"", 1);
}

/* Seconds with all nine digits of nanoseconds, exact (no binary float rounding here). */
static void sb_time(sb *b, struct timespec ts)
{
    long long s = (long long)ts.tv_sec;
    long ns = ts.tv_nsec;
    if (s < 0 && ns > 0)
        sb_fmt(b, "-%lld.%09ld", -(s + 1), 1000000000L - ns);
    else
        sb_fmt(b, "%lld.%09ld", s, ns);
}

static const char *file_type(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : "other";
}

/* The file info object of the protocol. target is NULL unless st is a symlink. */
void sb_info(sb *b, const char *path, size_t plen, const char *name, size_t nlen,
             const struct stat *st, const char *target, size_t tlen)
{
    sb_str(b, "{\"path\":");
    sb_jstr(b, path, plen);
    sb_str(b, ",\"name\":");
    sb_jstr(b, name, nlen);
    sb_fmt(b, ",\"type\":\"%s\",\"size\":%lld,\"mode\":%u,\"mtime\":", file_type(st->st_mode),
           (long long)st->st_size, (unsigned)(st->st_mode & 07777));
    sb_time(b, st->st_mtim);
    sb_str(b, ",\"target\":");
    if (target)
        sb_jstr(b, target, tlen);
    else
        sb_str(b, "null");
    sb_str(b, "}");
}

/* ------------------------------------------------------------------------------------ */
/* JSON input: a small strict parser into an arena, freed as a whole after each frame     */
/* ------------------------------------------------------------------------------------ */

static void *aalloc(arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        achunk *c = malloc(sizeof(achunk) + cap);
        if (!c)
            return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = (char *)(a->head + 1) + a->head->used;
    a->head->used += n;
    return p;
}

void afree(arena *a)
{
    while (a->head) {
        achunk *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

typedef struct {
    const unsigned char *p, *e;
    arena *a;
    int depth;
} jparser;

static void jws(jparser *j)
{
    while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At an opening quote. A lone \udc80..\udcff decodes to the raw byte 0x80..0xff (the
 * inverse of sb_jstr); other lone surrogates are rejected. */
static int jstring(jparser *j, char **out, size_t *outn)
{
    const unsigned char *s = ++j->p, *q = s;
    while (q < j->e && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= j->e)
        return -1;
    char *o = aalloc(j->a, (size_t)(q - s) + 1), *w = o;
    if (!o)
        return -1;
    const unsigned char *p = s;
    while (p < q) {
        unsigned c = *p++;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            *w++ = (char)c;
            continue;
        }
        c = *p++;
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (q - p < 4 || hex4(p, &cp))
                return -1;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                if (q - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
                *w++ = (char)(cp - 0xDC00);
                break;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            /* 6 escaped characters always make at most 4 output bytes: no overflow. */
            w += put_utf8(w, cp);
            break;
        }
        default:
            return -1;
        }
    }
    *w = 0;
    j->p = q + 1;
    *out = o;
    *outn = (size_t)(w - o);
    return 0;
}

static jv *jvalue(jparser *j);

static jv *jnew(jparser *j, int t)
{
    jv *v = aalloc(j->a, sizeof *v);
    if (v) {
        memset(v, 0, sizeof *v);
        v->t = t;
    }
    return v;
}

static int jlit(jparser *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->e - j->p) < n || memcmp(j->p, lit, n))
        return -1;
    j->p += n;
    return 0;
}

static jv *jcontainer(jparser *j, int obj)
{
    char close = obj ? '}' : ']';
    jv *v = jnew(j, obj ? J_OBJ : J_ARR), *tail = NULL;
    if (!v || ++j->depth > JSON_MAX_DEPTH)
        return NULL;
    j->p++;
    jws(j);
    if (j->p < j->e && *j->p == close) {
        j->p++;
        j->depth--;
        return v;
    }
    for (;;) {
        char *k = NULL;
        size_t kn = 0;
        if (obj) {
            jws(j);
            if (j->p >= j->e || *j->p != '"' || jstring(j, &k, &kn))
                return NULL;
            jws(j);
            if (j->p >= j->e || *j->p++ != ':')
                return NULL;
        }
        jv *item = jvalue(j);
        if (!item)
            return NULL;
        item->k = k;
        item->kn = kn;
        if (tail)
            tail->next = item;
        else
            v->kid = item;
        tail = item;
        jws(j);
        if (j->p >= j->e)
            return NULL;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ != close)
            return NULL;
        j->depth--;
        return v;
    }
}

static jv *jnumber(jparser *j)
{
    const unsigned char *s = j->p, *p = s;
    if (p < j->e && *p == '-')
        p++;
    const unsigned char *digits = p;
    while (p < j->e && *p >= '0' && *p <= '9')
        p++;
    if (p == digits)
        return NULL;
    if (p < j->e && *p == '.') {
        const unsigned char *f = ++p;
        while (p < j->e && *p >= '0' && *p <= '9')
            p++;
        if (p == f)
            return NULL;
    }
    if (p < j->e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->e && (*p == '+' || *p == '-'))
            p++;
        const unsigned char *x = p;
        while (p < j->e && *p >= '0' && *p <= '9')
            p++;
        if (p == x)
            return NULL;
    }
    char tmp[64];
    if ((size_t)(p - s) >= sizeof tmp)
        return NULL;
    memcpy(tmp, s, (size_t)(p - s));
    tmp[p - s] = 0;
    jv *v = jnew(j, J_NUM);
    if (v)
        v->d = strtod(tmp, NULL);
    j->p = p;
    return v;
}

static jv *jvalue(jparser *j)
{
    jws(j);
    if (j->p >= j->e)
        return NULL;
    jv *v;
    switch (*j->p) {
    case '{': return jcontainer(j, 1);
    case '[': return jcontainer(j, 0);
    case '"':
        v = jnew(j, J_STR);
        return v && !jstring(j, &v->s, &v->n) ? v : NULL;
    case 't':
    case 'f':
        v = jnew(j, J_BOOL);
        if (!v)
            return NULL;
        v->b = *j->p == 't';
        return jlit(j, v->b ? "true" : "false") ? NULL : v;
    case 'n':
        v = jnew(j, J_NULL);
        return v && !jlit(j, "null") ? v : NULL;
    default: return jnumber(j);
    }
}

/* The request object of a frame, or NULL if the payload is not one JSON object. */
jv *jparse_object(const unsigned char *p, size_t n, arena *a)
{
    jparser j = {p, p + n, a, 0};
    jv *v = jvalue(&j);
    jws(&j);
    return v && v->t == J_OBJ && j.p == j.e ? v : NULL;
}

jv *jget(const jv *o, const char *key)
{
    size_t kn = strlen(key);
    jv *found = NULL;
    for (jv *c = o->kid; c; c = c->next)
        if (c->kn == kn && !memcmp(c->k, key, kn))
            found = c; /* the last duplicate wins, as in Python's json */
    return found && found->t != J_NULL ? found : NULL;
}

/* An integer member in [lo, hi], def if absent. -1 if present but not such an integer. */
int jint(const jv *o, const char *key, long lo, long hi, long def, long *out)
{
    const jv *v = jget(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (v->t != J_NUM || !(v->d >= (double)lo && v->d <= (double)hi) ||
        v->d != (double)(long)v->d)
        return -1;
    *out = (long)v->d;
    return 0;
}

int jbool(const jv *o, const char *key, int def, int *out)
{
    const jv *v = jget(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (v->t != J_BOOL)
        return -1;
    *out = v->b;
    return 0;
}

/* A string usable as a C string (no NUL inside). */
int cstring_ok(const jv *v) { return v && v->t == J_STR && !memchr(v->s, 0, v->n); }
