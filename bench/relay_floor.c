/* relay_floor: this machine's floor for the gateway's per-token syscall pattern.
 *
 * A producer process writes a FRAME-byte frame on a unix socketpair every GAP
 * microseconds (a worker emitting a token); the relay, this process, waits in
 * epoll_wait, reads each frame with one read and writes OUT bytes to a loopback TCP
 * connection with one writev (an HTTP/1.1 chunk: size line, data, CRLF), which a
 * peer process reads (the client). Nothing else happens per event: no parsing, no
 * rendering, no allocation. The relay's own thread CPU time per event is what the
 * kernel and the wakeups cost at that pacing, the part of "gateway CPU us/token"
 * no gateway code can remove. bench/bench.py runs it at the measured decode pace.
 *
 * usage: relay_floor [-g GAP_US] [-n EVENTS] [-f FRAME] [-o OUT]
 * prints: relay_floor events=N gap_us=G frame=F out=O cpu_us_per_event=X wall_s=W
 * (events: reads, fewer than N when frames arrive faster than the relay reads). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE // clock_nanosleep under -std=c17; the build defines it already
#endif
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "relay_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The worker: n frames of `frame` bytes, one every gap_us, then EOF. */
static void produce(int fd, long n, long gap_us, size_t frame) {
    char buf[4096];
    memset(buf, 'f', sizeof buf);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    for (long i = 0; i < n; i++) {
        t.tv_nsec += gap_us * 1000;
        t.tv_sec += t.tv_nsec / 1000000000;
        t.tv_nsec %= 1000000000;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
            ;
        if (write(fd, buf, frame) != (ssize_t)frame)
            _exit(1);
    }
    _exit(0);
}

/* The client: reads until EOF. */
static void consume(int fd) {
    char buf[65536];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    _exit(0);
}

int main(int argc, char **argv) {
    long gap_us = 10000, n = 500, frame = 100, out = 300;
    int opt;
    while ((opt = getopt(argc, argv, "g:n:f:o:")) != -1) {
        long v = strtol(optarg, NULL, 10);
        if (opt == 'g')
            gap_us = v;
        else if (opt == 'n')
            n = v;
        else if (opt == 'f')
            frame = v;
        else if (opt == 'o')
            out = v;
        else
            return 2;
    }
    if (gap_us < 0 || n < 1 || frame < 1 || frame > 4096 || out < 1 || out > 4096) {
        fprintf(stderr, "usage: relay_floor [-g GAP_US] [-n EVENTS] [-f FRAME<=4096] [-o OUT<=4096]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    // the client's TCP connection, accepted here as the gateway accepts it
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1) ||
        getsockname(lfd, (struct sockaddr *)&a, &alen))
        die("listen");
    pid_t peer = fork();
    if (peer < 0)
        die("fork");
    if (peer == 0) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
            _exit(1);
        consume(c);
    }
    int tcp = accept(lfd, NULL, NULL);
    if (tcp < 0)
        die("accept");
    setsockopt(tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(lfd);

    // the worker's socketpair
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
        die("socketpair");
    pid_t prod = fork();
    if (prod < 0)
        die("fork");
    if (prod == 0) {
        close(sv[0]);
        close(tcp);
        produce(sv[1], n, gap_us, (size_t)frame);
    }
    close(sv[1]);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sv[0]};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev))
        die("epoll");
    char in[8192], body[4096], head[16];
    memset(body, 'x', sizeof body);
    int hl = snprintf(head, sizeof head, "%lx\r\n", out);
    struct iovec iov[3] = {{head, (size_t)hl}, {body, (size_t)out}, {"\r\n", 2}};
    long events = 0;
    double c0 = now(CLOCK_THREAD_CPUTIME_ID), w0 = now(CLOCK_MONOTONIC);
    for (;;) {
        struct epoll_event got;
        int k = epoll_wait(ep, &got, 1, 100);
        if (k < 0 && errno != EINTR)
            die("epoll_wait");
        if (k <= 0)
            continue;
        ssize_t r = read(sv[0], in, sizeof in);
        if (r == 0)
            break;
        if (r < 0)
            die("read");
        if (writev(tcp, iov, 3) < 0)
            die("writev");
        events++;
    }
    double cpu = now(CLOCK_THREAD_CPUTIME_ID) - c0, wall = now(CLOCK_MONOTONIC) - w0;
    close(tcp);
    waitpid(prod, NULL, 0);
    waitpid(peer, NULL, 0);
    printf("relay_floor events=%ld gap_us=%ld frame=%ld out=%ld cpu_us_per_event=%.2f wall_s=%.2f\n", events, gap_us,
           frame, out, events ? cpu * 1e6 / (double)events : 0.0, wall);
    return 0;
}
