// Linux calls whose C declarations are variadic, which Swift cannot call directly.
#pragma once
#include <sys/prctl.h>

/// prctl(PR_SET_CHILD_SUBREAPER, 1) (prctl(2)): orphaned descendants are re-parented
/// to the calling process instead of to PID 1. Returns 0, or -1 with errno set.
static inline int backstop_become_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0UL, 0UL, 0UL);
}

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

/// renameat2(2) with RENAME_NOREPLACE (1): renames `from` to `to` only if `to` does not
/// exist, atomically (EEXIST otherwise; rename(2) would replace an empty directory).
/// Returns 0, or -1 with errno set.
static inline int backstop_rename_noreplace(const char *from, const char *to) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 1u);
}

/// pidfd_open(2) with PIDFD_CLOEXEC semantics (pidfds are always close-on-exec): a
/// descriptor for process `pid`. Returns it, or -1 with errno set.
static inline int backstop_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0u);
}

#include <sys/vfs.h>

/// fstatfs(2)'s `f_type` of the file system `fd` is on (its magic number, linux/magic.h).
/// Returns it, or -1 with errno set.
static inline long long backstop_file_system_type(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return (long long)info.f_type;
}

#include <linux/capability.h>

/// Keeps in the calling thread's effective capability set only those also in `mask` (bit N
/// for capability N, as /proc/PID/status's CapEff shows them), with capget(2)/capset(2) on
/// this thread alone; the other threads of the process keep theirs. Returns 0, or -1 with errno set.
static inline int backstop_thread_limit_effective_capabilities(unsigned long long mask) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    data[0].effective &= (unsigned int)mask;
    data[1].effective &= (unsigned int)(mask >> 32);
    return (int)syscall(SYS_capset, &header, data);
}

/// pipe2(2) with O_CLOEXEC (declared by glibc only under _GNU_SOURCE): both ends
/// close-on-exec from the start, so no child forked meanwhile inherits them.
/// Returns 0, or -1 with errno set.
static inline int backstop_pipe_cloexec(int ends[2]) {
    return (int)syscall(SYS_pipe2, ends, O_CLOEXEC);
}

#include <stdint.h>
#include <sys/epoll.h>

/// Adds `fd` to epoll instance `epoll_fd` for one readiness report (EPOLLIN | EPOLLONESHOT)
/// carrying `token` (epoll_ctl(2), whose `struct epoll_event` is packed). Returns 0, or -1 with errno set.
static inline int backstop_epoll_watch_once(int epoll_fd, int fd, uint64_t token) {
    struct epoll_event event = { .events = EPOLLIN | EPOLLONESHOT, .data = { .u64 = token } };
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

/// Waits without a timeout for the next ready descriptor of `epoll_fd` (epoll_wait(2)) and
/// stores its token. Returns 1, or -1 with errno set (EINTR included).
static inline int backstop_epoll_next(int epoll_fd, uint64_t *token) {
    struct epoll_event event;
    int count = epoll_wait(epoll_fd, &event, 1, -1);
    if (count == 1) *token = event.data.u64;
    return count;
}

#include <errno.h>
#include <string.h>
#include <sys/timerfd.h>

/// A close-on-exec timerfd (timerfd_create(2), CLOCK_MONOTONIC) that becomes readable once,
/// `nanoseconds` from now (at least 1). Returns it, or -1 with errno set.
static inline int backstop_timerfd_once(uint64_t nanoseconds) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (fd < 0) return -1;
    struct itimerspec expiry;
    memset(&expiry, 0, sizeof expiry);
    if (nanoseconds == 0) nanoseconds = 1;  // zero would disarm it
    expiry.it_value.tv_sec = (time_t)(nanoseconds / 1000000000u);
    expiry.it_value.tv_nsec = (long)(nanoseconds % 1000000000u);
    if (timerfd_settime(fd, 0, &expiry, (void *)0) != 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}
