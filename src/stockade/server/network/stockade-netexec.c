/*
 * stockade-netexec SCRATCH_DIR PROGRAM [ARGS...]
 *
 * Runs PROGRAM (runsc) in a private mount namespace whose /proc/sys has no "net"
 * directory, so that runsc 20240729 accepts --network=sandbox.
 *
 * Why: that runsc decides it is in the root network namespace when
 * /proc/sys/net/core/rmem_default exists, and refuses to start a networked sandbox
 * there. On current kernels that file exists in every network namespace, so the check
 * fails even for our per-sandbox namespaces (gVisor fixed the check after 20240729).
 * Covering only net/core is not enough: after runsc joins the sandbox's namespace the
 * path resolves again through the new namespace. So /proc/sys becomes a tmpfs with
 * every subdirectory except net bind-mounted back from a fresh procfs.
 *
 * The mounts are private to this process tree: the host never sees them. This is a
 * compiled helper instead of a shell script because it runs on every networked create
 * and costs well under a millisecond, where mount(8) per directory costs tens.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *what, const char *path) {
    fprintf(stderr, "stockade-netexec: %s %s: %s\n", what, path, strerror(errno));
    return 125;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: stockade-netexec SCRATCH_DIR PROGRAM [ARGS...]\n");
        return 125;
    }
    const char *scratch = argv[1];
    char path[4096], target[4096];

    if (unshare(CLONE_NEWNS) != 0) return fail("unshare", "mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return fail("make private", "/");
    if (mkdir(scratch, 0700) != 0 && errno != EEXIST) return fail("mkdir", scratch);
    if (mount("proc", scratch, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return fail("mount proc on", scratch);
    if (mount("tmpfs", "/proc/sys", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=555") != 0)
        return fail("mount tmpfs on", "/proc/sys");

    snprintf(path, sizeof path, "%s/sys", scratch);
    DIR *dir = opendir(path);
    if (dir == NULL) return fail("opendir", path);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "net") == 0) continue;
        snprintf(path, sizeof path, "%s/sys/%s", scratch, e->d_name);
        snprintf(target, sizeof target, "/proc/sys/%s", e->d_name);
        if (mkdir(target, 0555) != 0) return fail("mkdir", target);
        if (mount(path, target, NULL, MS_BIND | MS_REC, NULL) != 0) return fail("bind", target);
    }
    closedir(dir);
    if (umount2(scratch, MNT_DETACH) != 0) return fail("umount", scratch);
    rmdir(scratch);

    execv(argv[2], argv + 2);
    return fail("exec", argv[2]);
}
