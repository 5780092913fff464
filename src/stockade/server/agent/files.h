/*
 * stockade-agent's file operations. Reads, writes and listings keep a channel open while
 * their data flows; stat, mkdir and remove answer at once.
 */
#ifndef STOCKADE_FILES_H
#define STOCKADE_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "json.h"

const jv *req_path(uint32_t ch, const jv *req);

/* Who a FILE_WRITE or FILE_MKDIR acts as; -1: the agent's own (root). */
typedef struct {
    long uid, gid;
} as_user;

void do_file_read(uint32_t ch, const jv *p);
void pump_file_read(chan *c);
void do_file_write(uint32_t ch, const jv *p, const jv *req);
void on_file_data(chan *c, const unsigned char *p, size_t n);
void on_file_end(chan *c);
void do_file_list(uint32_t ch, const jv *p);
void list_step(chan *c);
void do_file_stat(uint32_t ch, const jv *p);
void do_file_mkdir(uint32_t ch, const jv *p, const jv *req);
void do_file_remove(uint32_t ch, const jv *p, const jv *req);
void do_file_rename(uint32_t ch, const jv *p, const jv *req);
void do_file_chmod(uint32_t ch, const jv *p, const jv *req);

#endif
