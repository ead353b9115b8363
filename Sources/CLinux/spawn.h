// Process creation for Backstop's runners: clone3(2) with a pidfd, and in the child only
// system calls that are safe between fork and exec in a threaded process.
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/// The step of ``backstop_spawn`` that failed, as it reports it in `failed_step`.
enum backstop_spawn_step {
    /// In the caller: pipe2(2) or clone3(2) (no child was left behind).
    BACKSTOP_SPAWN_STEP_START = 0,
    /// setsid(2) in the child.
    BACKSTOP_SPAWN_STEP_SESSION = 1,
    /// setgroups(2) or setresgid(2) in the child.
    BACKSTOP_SPAWN_STEP_GROUP = 2,
    /// Mapping the descriptors (fcntl(2) F_DUPFD_CLOEXEC, dup2(2), close_range(2)) in the child.
    BACKSTOP_SPAWN_STEP_DESCRIPTORS = 3,
    /// execve(2) in the child.
    BACKSTOP_SPAWN_STEP_EXEC = 4,
};

/// The most descriptors ``backstop_spawn`` maps into the child.
#define BACKSTOP_SPAWN_MAXIMUM_DESCRIPTORS 16

/// The first 64 bytes of the kernel's `struct clone_args` (CLONE_ARGS_SIZE_VER0, linux/sched.h).
struct backstop_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

/// The kernel's `struct sigaction` (asm-generic/signal.h with SA_RESTORER, as on x86-64 and arm64).
struct backstop_kernel_sigaction {
    uintptr_t handler;
    unsigned long flags;
    uintptr_t restorer;
    uint64_t mask;
};

/// Reports the failed `step` with the current errno on `report_fd` and ends the child (exit code 127).
static inline void backstop_spawn_child_failed(int report_fd, int step) {
    int report[2] = { step, errno };
    while (write(report_fd, report, sizeof report) < 0 && errno == EINTR) {}
    syscall(SYS_exit_group, 127);
}

/// The child's side of ``backstop_spawn``: nothing but system calls, no allocation, no lock,
/// nothing of glibc's that would wait for the parent's other threads (its setgid(2) and
/// setgroups(2) wrappers broadcast to every thread of the process, which this copy lacks).
static inline void backstop_spawn_child(const char *path, char *const argv[], char *const envp[],
                                        const int *descriptors, int descriptor_count, long long group_id, int report_fd) {
    if (setsid() < 0) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_SESSION);
    if (group_id >= 0) {
        if (syscall(SYS_setgroups, 0, (void *)0) != 0) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_GROUP);
        gid_t gid = (gid_t)group_id;
        if (syscall(SYS_setresgid, gid, gid, gid) != 0) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_GROUP);
    }
    // Every source (and the report pipe) above the targets first, so that no dup2 overwrites
    // a source still to be placed; then each to its place (dup2 clears close-on-exec there).
    report_fd = fcntl(report_fd, F_DUPFD_CLOEXEC, descriptor_count);
    if (report_fd < 0) syscall(SYS_exit_group, 127);
    int moved[BACKSTOP_SPAWN_MAXIMUM_DESCRIPTORS];
    for (int target = 0; target < descriptor_count; target++) {
        moved[target] = fcntl(descriptors[target], F_DUPFD_CLOEXEC, descriptor_count);
        if (moved[target] < 0) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_DESCRIPTORS);
    }
    for (int target = 0; target < descriptor_count; target++) {
        if (dup2(moved[target], target) != target) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_DESCRIPTORS);
    }
    // Everything else closes at the exec (CLOSE_RANGE_CLOEXEC, Linux 5.11).
    if (syscall(SYS_close_range, (unsigned)descriptor_count, ~0u, 4u) != 0) backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_DESCRIPTORS);
    // No handler of the parent's runs here, none is ignored after the exec, nothing is blocked.
    // rt_sigaction(2) itself: glibc's wrapper refuses the signals it keeps for its threads (32, 33).
    struct backstop_kernel_sigaction standard = { 0, 0, 0, 0 };  // SIG_DFL
    for (int number = 1; number <= 64; number++) {
        if (number != SIGKILL && number != SIGSTOP) syscall(SYS_rt_sigaction, number, &standard, (void *)0, sizeof(uint64_t));
    }
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, (void *)0, sizeof none);
    execve(path, argv, envp);
    backstop_spawn_child_failed(report_fd, BACKSTOP_SPAWN_STEP_EXEC);
}

/// Starts `path` with `argv` and `envp` (null-terminated) in a new session (setsid(2)).
///
/// The child is made with clone3(2) and CLONE_PIDFD (Linux 5.3). Before the exec it joins
/// group `group_id` alone (setgroups(2) to none, setresgid(2); -1 keeps the caller's groups),
/// gets `descriptors[i]` as its descriptor i for i < `descriptor_count` (the same source
/// may appear twice; at most ``BACKSTOP_SPAWN_MAXIMUM_DESCRIPTORS``, else EINVAL), has every other descriptor closed at the exec, every signal's default
/// action and an empty signal mask.
///
/// Returns the child's pid, with a close-on-exec pidfd of it in `*pidfd`. Returns -1 with
/// errno set and `*failed_step` one of ``backstop_spawn_step`` when the process could not be
/// made or failed before its exec: the child then has been reaped, and nothing is left.
static inline int backstop_spawn(const char *path, char *const argv[], char *const envp[],
                                 const int *descriptors, int descriptor_count, long long group_id,
                                 int *pidfd, int *failed_step) {
    *failed_step = BACKSTOP_SPAWN_STEP_START;
    if (descriptor_count < 0 || descriptor_count > BACKSTOP_SPAWN_MAXIMUM_DESCRIPTORS) {
        errno = EINVAL;
        return -1;
    }
    int report_pipe[2];
    if (syscall(SYS_pipe2, report_pipe, O_CLOEXEC) != 0) return -1;
    // Blocked until the child has reset the handlers: none of the parent's runs in the child.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    int descriptor = -1;
    struct backstop_clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = 0x00001000; // CLONE_PIDFD
    args.pidfd = (uint64_t)(uintptr_t)&descriptor;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) backstop_spawn_child(path, argv, envp, descriptors, descriptor_count, group_id, report_pipe[1]);
    int clone_error = errno;
    pthread_sigmask(SIG_SETMASK, &previous, (void *)0);
    close(report_pipe[1]);
    if (pid < 0) {
        close(report_pipe[0]);
        errno = clone_error;
        return -1;
    }
    // End of file: the exec succeeded and closed the pipe. A report: the child failed and ends.
    int report[2];
    ssize_t count;
    while ((count = read(report_pipe[0], report, sizeof report)) < 0 && errno == EINTR) {}
    close(report_pipe[0]);
    if (count == (ssize_t)sizeof report) {
        siginfo_t info;
        while (waitid((idtype_t)3 /* P_PIDFD */, (id_t)descriptor, &info, WEXITED) != 0 && errno == EINTR) {}
        close(descriptor);
        *failed_step = report[0];
        errno = report[1];
        return -1;
    }
    *pidfd = descriptor;
    return (int)pid;
}
