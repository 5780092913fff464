/*
 * stockade-agent: the init process (PID 1) of every Stockade sandbox.
 *
 * It serves the framed protocol described in docs/agent-protocol.md on fd 0 (requests)
 * and fd 1 (replies): execs with pipes or a terminal, and file operations. fd 2 is the
 * sandbox log. It must work in any image (no shell, no libraries), so it is one static
 * C file with nothing but libc.
 *
 * Design: one thread, one poll() loop, every descriptor non-blocking. Signals only write
 * a byte to a self-pipe. Replies wait in an output queue while the channel is full.
 * Channels are freed only at the end of a loop iteration (sweep_channels), so that
 * pointers taken from the poll set stay valid while the events are handled.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o stockade-agent stockade-agent.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

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
};

/* ------------------------------------------------------------------------------------ */
/* Logging and growable buffers                                                          */
/* ------------------------------------------------------------------------------------ */

__attribute__((format(printf, 1, 2))) static void logmsg(const char *fmt, ...)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "stockade-agent: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* fd 2 is a log file; a failed diagnostic has nowhere else to go. */
    if (write(2, line, len) < 0) {
    }
}

/* A byte buffer whose appends turn into no-ops once an allocation failed (oom), so that
 * builders need one check at the end instead of one per append. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sb;

static void sb_reserve(sb *b, size_t extra)
{
    if (b->oom || b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_put(sb *b, const void *d, size_t n)
{
    sb_reserve(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void sb_str(sb *b, const char *s) { sb_put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void sb_fmt(sb *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_free(sb *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static uint32_t be32(const unsigned char *p)
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
static void sb_jstr(sb *b, const char *s, size_t n)
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
static void sb_info(sb *b, const char *path, size_t plen, const char *name, size_t nlen,
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

typedef struct achunk {
    struct achunk *next;
    size_t used, cap;
} achunk;

typedef struct {
    achunk *head;
} arena;

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

static void afree(arena *a)
{
    while (a->head) {
        achunk *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

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
static jv *jparse_object(const unsigned char *p, size_t n, arena *a)
{
    jparser j = {p, p + n, a, 0};
    jv *v = jvalue(&j);
    jws(&j);
    return v && v->t == J_OBJ && j.p == j.e ? v : NULL;
}

static jv *jget(const jv *o, const char *key)
{
    size_t kn = strlen(key);
    jv *found = NULL;
    for (jv *c = o->kid; c; c = c->next)
        if (c->kn == kn && !memcmp(c->k, key, kn))
            found = c; /* the last duplicate wins, as in Python's json */
    return found && found->t != J_NULL ? found : NULL;
}

/* An integer member in [lo, hi], def if absent. -1 if present but not such an integer. */
static int jint(const jv *o, const char *key, long lo, long hi, long def, long *out)
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

static int jbool(const jv *o, const char *key, int def, int *out)
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
static int cstring_ok(const jv *v) { return v && v->t == J_STR && !memchr(v->s, 0, v->n); }

/* ------------------------------------------------------------------------------------ */
/* Output queue                                                                          */
/* ------------------------------------------------------------------------------------ */

typedef struct ofr {
    struct ofr *next;
    size_t len, off;
    unsigned char d[];
} ofr;

static ofr *oq_head, *oq_tail;
static size_t oq_bytes; /* bytes not yet written */
static int out_broken;  /* fd 1 failed for good (only outside a sandbox: a closed pipe) */

static void emit(int type, uint32_t ch, const void *payload, size_t n)
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

static void emit_sb(int type, uint32_t ch, sb *b)
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

static void emit_error(uint32_t ch, int err, const char *what, const char *path, size_t plen)
{
    emit_err(ch, err, what, path, plen, 1);
}

/* A malformed request (EINVAL): the message says what was expected. */
static void emit_bad(uint32_t ch, const char *what, const char *path, size_t plen)
{
    emit_err(ch, EINVAL, what, path, plen, 0);
}

static void oq_clear(void)
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
static void flush_out(void)
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

/* ------------------------------------------------------------------------------------ */
/* Channels                                                                              */
/* ------------------------------------------------------------------------------------ */

enum { K_EXEC, K_READ, K_WRITE, K_LIST };
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
} chan;

static chan **chans;
static size_t nchans;

static chan *find_chan(uint32_t id)
{
    for (size_t i = 0; i < nchans; i++)
        if (chans[i]->id == id && !chans[i]->dead)
            return chans[i];
    return NULL;
}

static chan *new_chan(uint32_t id, int kind)
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

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_exec_fds(chan *c)
{
    if (c->in_fd == c->out_fd)
        c->in_fd = -1; /* the pty master: one descriptor, closed once */
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    close_fd(&c->err_fd);
    close_fd(&c->errp_fd);
}

/* Forget a channel; its resources go now, the struct at the next sweep. */
static void chan_forget(chan *c)
{
    close_exec_fds(c);
    close_fd(&c->fd);
    close_fd(&c->dirfd);
    c->dead = 1;
}

/* Forget a channel the server gave up (CLOSE, HELLO): an exec's whole process group gets
 * SIGKILL. Before the child's setsid() the group does not exist yet, hence the direct
 * kill as well. */
static void chan_abort(chan *c)
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
    free(c);
}

static void sweep_channels(void)
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
static void chan_fail(chan *c, int err, const char *what)
{
    emit_error(c->id, err, what, c->path, c->plen);
    chan_abort(c);
}

static void chan_bad(chan *c, const char *what)
{
    emit_bad(c->id, what, NULL, 0);
    chan_abort(c);
}

/* ------------------------------------------------------------------------------------ */
/* Spawning processes                                                                    */
/* ------------------------------------------------------------------------------------ */

enum { STAGE_SETUP = 1, STAGE_CHDIR = 2, STAGE_EXEC = 3 };

static struct rlimit orig_nofile; /* restored in children: the agent raises its own */

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
static int spawn(const spawn_req *r, spawn_res *res)
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
static void resolve_start(chan *c, int exited)
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

static void do_exec(uint32_t ch, const jv *req)
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
static int pump_output(chan *c, int stream)
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

static void pump_stdin(chan *c)
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

static void on_stdin(chan *c, const unsigned char *p, size_t n)
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
static void exec_exited(chan *c, int code)
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
static int exec_finish(chan *c)
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

static int decode_status(int st)
{
    return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}

/* ------------------------------------------------------------------------------------ */
/* File operations                                                                       */
/* ------------------------------------------------------------------------------------ */

/* The request's "path": absolute, no NUL, at most PATH_LIMIT bytes. Sends ERROR if not. */
static const jv *req_path(uint32_t ch, const jv *req)
{
    const jv *p = jget(req, "path");
    if (!p || p->t != J_STR) {
        emit_bad(ch, "bad request: \"path\" must be a string", NULL, 0);
        return NULL;
    }
    if (!cstring_ok(p) || p->s[0] != '/') {
        emit_bad(ch, "bad request: the path must be absolute and without NUL:",
                   p->s, p->n);
        return NULL;
    }
    if (p->n > PATH_LIMIT) {
        emit_error(ch, ENAMETOOLONG, "path too long:", p->s, p->n);
        return NULL;
    }
    return p;
}

static int all_slashes(const char *p)
{
    return p[strspn(p, "/")] == 0;
}

/* The last component of the path ("/" for the root). */
static void base_name(const char *path, size_t plen, const char **name, size_t *nlen)
{
    while (plen > 1 && path[plen - 1] == '/')
        plen--;
    size_t start = plen;
    while (start > 0 && path[start - 1] != '/')
        start--;
    if (start == plen) { /* only slashes */
        *name = "/";
        *nlen = 1;
        return;
    }
    *name = path + start;
    *nlen = plen - start;
}

/* The file info of path (lstat), in a RESULT; or an ERROR. */
static void emit_info(uint32_t ch, const char *path, size_t plen)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        emit_error(ch, errno, "cannot stat", path, plen);
        return;
    }
    char target[PATH_MAX + 1];
    ssize_t tl = -1;
    if (S_ISLNK(st.st_mode))
        tl = readlink(path, target, sizeof target);
    const char *name;
    size_t nlen;
    base_name(path, plen, &name, &nlen);
    sb b = {0};
    sb_info(&b, path, plen, name, nlen, &st, tl >= 0 ? target : NULL, tl >= 0 ? (size_t)tl : 0);
    emit_sb(T_RESULT, ch, &b);
}

/* mkdir -p: every component of path (a writable copy) with mode 0755. 0 or an errno;
 * a component that exists but is not a directory gives ENOTDIR. */
static int mkdir_parents(char *path)
{
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char saved = *p;
        *p = 0;
        struct stat st;
        int e = 0;
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            e = errno;
        else if (stat(path, &st) < 0)
            e = errno;
        else if (!S_ISDIR(st.st_mode))
            e = ENOTDIR;
        *p = saved;
        if (e || !saved)
            return e;
        while (p[1] == '/')
            p++;
        if (!p[1])
            return 0; /* trailing slash */
    }
}

static void do_file_read(uint32_t ch, const jv *p)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; reads go through poll. */
    int fd = open(p->s, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0) {
        emit_error(ch, errno, "cannot open", p->s, p->n);
        return;
    }
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        emit_error(ch, EISDIR, "cannot read a directory (list it instead):", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_READ);
    if (!c || !(c->path = strdup(p->s))) {
        close(fd);
        emit_error(ch, ENOMEM, "too many open channels; cannot read", p->s, p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->fd = fd;
}

static void pump_file_read(chan *c)
{
    size_t want = c->window < CHUNK ? (size_t)c->window : CHUNK;
    unsigned char buf[CHUNK];
    ssize_t n;
    if (!want)
        return;
    do
        n = read(c->fd, buf, want);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        emit(T_DATA, c->id, buf, (size_t)n);
        c->window -= (uint64_t)n;
    } else if (n == 0) {
        emit(T_END, c->id, NULL, 0);
        chan_abort(c);
    } else if (errno != EAGAIN) {
        chan_fail(c, errno, "cannot read");
    }
}

static void do_file_write(uint32_t ch, const jv *p, const jv *req)
{
    long mode;
    if (jint(req, "mode", 0, 07777, 0644, &mode)) {
        emit_bad(ch, "bad request: \"mode\" must be an integer in 0..4095 for",
                   p->s, p->n);
        return;
    }
    if (all_slashes(p->s)) {
        emit_error(ch, EISDIR, "cannot write", p->s, p->n);
        return;
    }
    char *parent = strdup(p->s);
    if (!parent) {
        emit_error(ch, ENOMEM, "cannot write", p->s, p->n);
        return;
    }
    char *slash = strrchr(parent, '/');
    int e = 0;
    if (slash != parent) { /* the parent of "/x" is "/", which exists */
        *slash = 0;
        e = mkdir_parents(parent);
    }
    free(parent);
    if (e) {
        emit_error(ch, e, "cannot create the parent directories of", p->s, p->n);
        return;
    }
    /* The mode applies when the file is created (the agent's umask is 0), as with open(2).
     * O_NONBLOCK: a FIFO planted at the path must not hang the agent. */
    int fd = open(p->s, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                  (mode_t)mode);
    if (fd < 0) {
        emit_error(ch, errno, "cannot open", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_WRITE);
    if (!c || !(c->path = strdup(p->s))) {
        close(fd);
        emit_error(ch, ENOMEM, "too many open channels; cannot write", p->s, p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->fd = fd;
    emit(T_READY, ch, NULL, 0);
}

static void on_file_data(chan *c, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            /* Report now: the server can stop sending; later DATA finds no channel. */
            chan_fail(c, w < 0 ? errno : EIO, "cannot write");
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void on_file_end(chan *c)
{
    int fd = c->fd;
    c->fd = -1;
    if (close(fd) < 0 && errno != EINTR) {
        chan_fail(c, errno, "cannot write");
        return;
    }
    emit_info(c->id, c->path, c->plen);
    chan_abort(c);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_step(chan *c);

static void do_file_list(uint32_t ch, const jv *p)
{
    int dirfd = open(p->s, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        emit_error(ch, errno, "cannot list", p->s, p->n);
        return;
    }
    int rfd = dup(dirfd);
    DIR *d = rfd < 0 ? NULL : fdopendir(rfd);
    if (!d) {
        int e = errno;
        close_fd(&rfd);
        close(dirfd);
        emit_error(ch, e, "cannot list", p->s, p->n);
        return;
    }
    chan *c = new_chan(ch, K_LIST);
    int e = c && (c->path = strdup(p->s)) ? 0 : ENOMEM;
    size_t cap = 0;
    struct dirent *de;
    /* All names first: the count decides E2BIG before any entry is sent, and the result
     * is sorted. Only names are held; each entry is stat'ed when its batch is built. */
    while (!e && (errno = 0, de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (c->nnames >= LIST_MAX) {
            e = E2BIG;
            break;
        }
        if (c->nnames == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(c->names, cap * sizeof *grown);
            if (!grown) {
                e = ENOMEM;
                break;
            }
            c->names = grown;
        }
        if (!(c->names[c->nnames] = strdup(de->d_name)))
            e = ENOMEM;
        else
            c->nnames++;
    }
    if (!e && errno)
        e = errno;
    closedir(d);
    if (e) {
        close(dirfd);
        emit_error(ch, e, e == E2BIG ? "more than 100000 entries in" : "cannot list", p->s,
                   p->n);
        if (c)
            chan_abort(c);
        return;
    }
    c->plen = p->n;
    c->dirfd = dirfd;
    qsort(c->names, c->nnames, sizeof *c->names, cmp_names);
    list_step(c);
}

/* One batch of entries: DATA {"entries": [...]} while more follow, RESULT for the last. */
static void list_step(chan *c)
{
    sb b = {0}, path = {0};
    int first = 1;
    sb_str(&b, "{\"entries\":[");
    while (c->idx < c->nnames && b.len < LIST_BATCH && !b.oom) {
        const char *name = c->names[c->idx++];
        struct stat st;
        if (fstatat(c->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed since readdir */
        char target[PATH_MAX + 1];
        ssize_t tl = S_ISLNK(st.st_mode) ? readlinkat(c->dirfd, name, target, sizeof target) : -1;
        path.len = 0;
        sb_put(&path, c->path, c->plen);
        if (c->plen && c->path[c->plen - 1] != '/')
            sb_put(&path, "/", 1);
        sb_str(&path, name);
        if (!first)
            sb_put(&b, ",", 1);
        first = 0;
        sb_info(&b, path.p ? path.p : "", path.len, name, strlen(name), &st,
                tl >= 0 ? target : NULL, tl >= 0 ? (size_t)tl : 0);
        if (path.oom)
            b.oom = 1;
    }
    sb_free(&path);
    sb_str(&b, "]}");
    if (b.oom) {
        sb_free(&b);
        chan_fail(c, ENOMEM, "cannot list");
        return;
    }
    int last = c->idx >= c->nnames;
    emit_sb(last ? T_RESULT : T_DATA, c->id, &b);
    if (last)
        chan_abort(c);
}

static void do_file_stat(uint32_t ch, const jv *p) { emit_info(ch, p->s, p->n); }

static void do_file_mkdir(uint32_t ch, const jv *p, const jv *req)
{
    int parents;
    if (jbool(req, "parents", 0, &parents)) {
        emit_bad(ch, "bad request: \"parents\" must be a boolean for", p->s, p->n);
        return;
    }
    struct stat st;
    int e = 0;
    if (stat(p->s, &st) == 0) {
        e = S_ISDIR(st.st_mode) ? 0 : EEXIST;
    } else if (errno != ENOENT) {
        e = errno;
    } else if (parents) {
        char *copy = strdup(p->s);
        e = copy ? mkdir_parents(copy) : ENOMEM;
        free(copy);
    } else if (mkdir(p->s, 0755) < 0) {
        e = errno;
        if (e == EEXIST) /* created meanwhile: fine if it is a directory */
            e = stat(p->s, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : EEXIST;
    }
    if (e)
        emit_error(ch, e, e == EEXIST ? "exists and is not a directory:" : "cannot create",
                   p->s, p->n);
    else
        emit_info(ch, p->s, p->n);
}

static int rm_errno;
static char rm_path[PATH_LIMIT + 1];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int r = flag == FTW_DP || flag == FTW_DNR ? rmdir(path) : unlink(path);
    if (r < 0 && errno != ENOENT) {
        rm_errno = errno;
        snprintf(rm_path, sizeof rm_path, "%s", path);
        return 1; /* stop at the first failure and report it */
    }
    return 0;
}

static void do_file_remove(uint32_t ch, const jv *p, const jv *req)
{
    int recursive;
    if (jbool(req, "recursive", 0, &recursive)) {
        emit_bad(ch, "bad request: \"recursive\" must be a boolean for", p->s, p->n);
        return;
    }
    if (all_slashes(p->s)) {
        emit_error(ch, EACCES, "refusing to remove", p->s, p->n);
        return;
    }
    struct stat st;
    if (lstat(p->s, &st) < 0) {
        emit_error(ch, errno, "cannot remove", p->s, p->n);
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(p->s) < 0)
            emit_error(ch, errno, "cannot remove", p->s, p->n);
        else
            emit(T_RESULT, ch, "{}", 2);
        return;
    }
    if (!recursive) {
        if (rmdir(p->s) < 0) {
            int e = errno == EEXIST ? ENOTEMPTY : errno;
            emit_error(ch, e, e == ENOTEMPTY ? "directory not empty (remove it recursively):"
                                             : "cannot remove", p->s, p->n);
        } else {
            emit(T_RESULT, ch, "{}", 2);
        }
        return;
    }
    /* Depth first, never following symlinks: a link to elsewhere is removed, not walked. */
    rm_errno = 0;
    int r = nftw(p->s, rm_one, 32, FTW_DEPTH | FTW_PHYS);
    if (r < 0 && !rm_errno) {
        rm_errno = errno;
        snprintf(rm_path, sizeof rm_path, "%s", p->s);
    }
    if (rm_errno)
        emit_error(ch, rm_errno, "cannot remove", rm_path, strlen(rm_path));
    else
        emit(T_RESULT, ch, "{}", 2);
}

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
           type == T_FILE_REMOVE;
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
        } else if (ex || c->kind == K_READ) {
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
    case W_FILE: pump_file_read(c); break;
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
