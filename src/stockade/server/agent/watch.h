/*
 * stockade-agent's file watches: FILE_WATCH opens a channel that reports create, modify,
 * delete and rename events under a path (its whole tree with "recursive") through
 * inotify, as DATA frames of {"events": [...]} under the channel's output window.
 *
 * Bounds: at most WATCH_MAX inotify watches per channel (past it a "limit" event says
 * that deeper directories are not watched). The agent always drains the inotify
 * descriptor (gVisor's inotify queue has no cap of its own, unlike Linux's
 * max_queued_events): raw events wait in the channel's buffer, up to WATCH_QUEUE bytes,
 * while the window is short; past that they are dropped and one "overflow" event follows
 * the ones kept. Closing the channel closes the inotify descriptor and every watch.
 */
#ifndef STOCKADE_WATCH_H
#define STOCKADE_WATCH_H

#include <stdint.h>

#include "channel.h"
#include "json.h"

#define WATCH_MAX 8192            /* inotify watches per channel (directories of a tree) */
#define WATCH_FRAME (64u * 1024u) /* a DATA frame of events ends past this... */
#define WATCH_NEED (192u * 1024u) /* ...so one is sent only with this much window */
#define WATCH_DEPTH 64            /* directories deeper than this are not walked */
#define WATCH_QUEUE (512u * 1024u) /* raw events kept while the window is short (~16k) */

void do_file_watch(uint32_t ch, const jv *p, const jv *req);
void pump_watch(chan *c);
int watch_pending(const chan *c);
void watch_step(chan *c);

#endif
