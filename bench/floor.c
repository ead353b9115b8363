/* The physical floor of supervising one process, for bench/bench.py: start it, wait for
 * its exit on a pidfd with epoll, start it again at once; nothing else (no journal, no
 * state, no sandbox). Each exit is written as "exit PID NS", NS being CLOCK_MONOTONIC
 * nanoseconds read as soon as epoll reports the pidfd readable.
 *
 *     floor EXITS FILE PROGRAM [ARG...]
 *
 * Stops after EXITS exits and writes the lines to FILE at the end, so that no write lies
 * between an exit and the next start. */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static pid_t start(char **argv, int epoll, int *pidfd) {
    pid_t pid;
    int error = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (error) {
        errno = error;
        perror("posix_spawn");
        exit(1);
    }
    *pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (*pidfd < 0) {
        perror("pidfd_open");
        exit(1);
    }
    struct epoll_event event = {.events = EPOLLIN, .data.fd = *pidfd};
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, *pidfd, &event) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
    return pid;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: floor EXITS FILE PROGRAM [ARG...]\n");
        return 2;
    }
    long exits = strtol(argv[1], NULL, 10);
    long long *stamps = calloc((size_t)exits, sizeof *stamps);
    pid_t *pids = calloc((size_t)exits, sizeof *pids);
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    if (!stamps || !pids || epoll < 0) {
        perror("floor");
        return 1;
    }
    int pidfd;
    pid_t pid = start(argv + 3, epoll, &pidfd);
    for (long n = 0; n < exits;) {
        struct epoll_event event;
        int ready = epoll_wait(epoll, &event, 1, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) {
            perror("epoll_wait");
            return 1;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        stamps[n] = now.tv_sec * 1000000000LL + now.tv_nsec;
        pids[n++] = pid;
        waitpid(pid, NULL, 0);
        close(pidfd);
        if (n < exits) pid = start(argv + 3, epoll, &pidfd);
    }
    FILE *file = fopen(argv[2], "w");
    if (!file) {
        perror(argv[2]);
        return 1;
    }
    for (long n = 0; n < exits; n++) fprintf(file, "exit %d %lld\n", (int)pids[n], stamps[n]);
    return fclose(file) == 0 ? 0 : 1;
}
