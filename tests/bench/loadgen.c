/*
 * A closed-loop load generator for the composable_server benchmark.
 *
 * One thread, epoll.  N clients each keep exactly one request in flight: send
 * a 32-byte line, wait for the 32-byte echo, record the latency, send the
 * next.  Prints one JSON object on stdout.
 *
 *   loadgen MODE TARGET CLIENTS DURATION WARMUP [TIMEOUT [IDLE]]
 *
 *   MODE      tcp       persistent TCP connections (TARGET host:port)
 *             tcp-cpr   a new TCP connection per request: connect, send,
 *                       shutdown(SHUT_WR), read the echo and EOF, close with
 *                       SO_LINGER 0 (RST: no TIME_WAIT, so no port exhaustion)
 *             udp       connected UDP sockets (TARGET host:port); a reply not
 *                       seen within TIMEOUT counts as lost and the client
 *                       sends the next request
 *             unix      persistent Unix stream connections (TARGET a path)
 *             unix-cpr  a new Unix stream connection per request
 *   DURATION  seconds measured, after WARMUP seconds not measured
 *   TIMEOUT   seconds (default 1.0) before a UDP request counts as lost
 *   IDLE      (tcp, unix) connections opened before the active ones, each
 *             sending one request and reading its echo, then silent until
 *             the end (keep-alive clients between messages); at most 20000,
 *             opened within 120 s (fewer if that runs out: "idle_opened").
 *             "idle_alive" counts those still open at the end.  The
 *             descriptor limit is raised to the hard limit ("nofile").
 *             "measuring" is written to stderr when the measured part begins.
 *
 * Only loopback and Unix sockets; the run is bounded by WARMUP+DURATION
 * seconds plus at most one second of wind-down.
 *
 * Built by tests/bench/run.py with `gcc -O2` into a cache directory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MSG 32
#define FINE_US 100000              /* 1 us buckets up to 100 ms */
#define COARSE_MS 100000            /* then 1 ms buckets up to 100 s */

enum mode { TCP, TCP_CPR, UDP, UNIX_S, UNIX_CPR };

struct client {
    int fd;
    int got;            /* bytes of the echo received */
    int eof_wait;       /* cpr: echo complete, waiting for EOF */
    int connecting;
    uint32_t seq;
    double sent;        /* when the current request started */
    double retry_at;    /* a Unix connect found the backlog full: retry then */
    char buf[MSG];
    int served;         /* completed at least one request */
};

static enum mode mode;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static int ep;
static uint32_t fine[FINE_US];
static uint32_t coarse[COARSE_MS];
static uint64_t measured, errors, lost, total;
static int measuring;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(double seconds) {
    total++;
    if (!measuring) return;
    measured++;
    uint64_t us = (uint64_t)(seconds * 1e6);
    if (us < FINE_US) fine[us]++;
    else {
        uint64_t ms = us / 1000;
        coarse[ms < COARSE_MS ? ms : COARSE_MS - 1]++;
    }
}

static double percentile(double p) {
    if (!measured) return 0;
    uint64_t want = (uint64_t)(p * measured), seen = 0;
    if (want >= measured) want = measured - 1;
    for (int i = 0; i < FINE_US; i++) {
        seen += fine[i];
        if (seen > want) return i;
    }
    for (int i = 0; i < COARSE_MS; i++) {
        seen += coarse[i];
        if (seen > want) return i * 1000.0;
    }
    return COARSE_MS * 1000.0;
}

static void fill(struct client *c, int index) {
    char line[MSG + 1];
    snprintf(line, sizeof line, "%08x %010u xxxxxxxxxxxx", (unsigned)index, c->seq);
    memcpy(c->buf, line, MSG - 1);
    c->buf[MSG - 1] = '\n';
}

static int is_stream(void) { return mode != UDP; }
static int is_cpr(void) { return mode == TCP_CPR || mode == UNIX_CPR; }

static int open_socket(void) {
    int fd = socket(addr.ss_family, (is_stream() ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    if (addr.ss_family == AF_INET) {
        int one = 1;
        if (is_stream()) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (is_cpr()) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    return fd;
}

static void send_request(struct client *c, int index) {
    c->seq++;
    fill(c, index);
    c->got = 0;
    c->eof_wait = 0;
    c->sent = now();
    ssize_t n = send(c->fd, c->buf, MSG, MSG_NOSIGNAL);
    if (n != MSG) {
        /* A 32-byte write into an empty socket buffer does not come out short. */
        errors++;
    }
    if (is_cpr()) shutdown(c->fd, SHUT_WR);
}

static void start(struct client *c, int index) {
    struct epoll_event ev = {.data.u32 = (uint32_t)index};
    c->fd = open_socket();
    c->sent = now();
    if (connect(c->fd, (struct sockaddr *)&addr, addrlen) < 0) {
        if (errno == EAGAIN && addr.ss_family == AF_UNIX) {
            /* unix(7): the listen backlog is full; a TCP SYN would be retried
               by the kernel, a Unix connect must be retried by us. */
            close(c->fd);
            c->fd = -1;
            c->retry_at = now() + 0.001;
            return;
        }
        if (errno != EINPROGRESS) {
            errors++;
            close(c->fd);
            c->fd = -1;
            return;
        }
        c->connecting = 1;
        ev.events = EPOLLOUT;
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        return;
    }
    c->connecting = 0;
    ev.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    double t0 = c->sent;
    send_request(c, index);
    if (is_cpr()) c->sent = t0; /* a cpr request's latency includes the connect */
}

static void finish_conn(struct client *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void on_event(struct client *clients, int index, uint32_t events) {
    struct client *c = &clients[index];
    (void)events;
    if (c->fd < 0) return;
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            errors++;
            finish_conn(c);
            start(c, index);
            return;
        }
        c->connecting = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        double t0 = c->sent;
        send_request(c, index);
        if (is_cpr()) c->sent = t0;
        return;
    }
    for (;;) {
        char in[4096];
        ssize_t n = recv(c->fd, in, sizeof in, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            errors++;
            finish_conn(c);
            start(c, index);
            return;
        }
        if (n == 0) {
            if (is_cpr() && c->eof_wait) {
                finish_conn(c);
                start(c, index);
            } else {
                /* The server closed a connection in the middle of a request. */
                errors++;
                finish_conn(c);
                start(c, index);
            }
            return;
        }
        if (mode == UDP) {
            if (n != MSG || memcmp(in, c->buf, MSG) != 0) continue; /* a late reply */
            record(now() - c->sent);
            c->served = 1;
            send_request(c, index);
            continue;
        }
        c->got += (int)n;
        if (c->got >= MSG) {
            if (c->got > MSG) errors++;
            if (is_cpr()) {
                if (!c->eof_wait) {
                    record(now() - c->sent);
                    c->served = 1;
                    c->eof_wait = 1;
                }
                continue; /* read on until EOF */
            }
            record(now() - c->sent);
            c->served = 1;
            send_request(c, index);
            /* The echo of the next request cannot be here yet in a closed loop. */
            return;
        }
    }
}

static int parse_target(const char *target) {
    memset(&addr, 0, sizeof addr);
    if (mode == UNIX_S || mode == UNIX_CPR) {
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        un->sun_family = AF_UNIX;
        if (strlen(target) >= sizeof un->sun_path) return -1;
        strcpy(un->sun_path, target);
        addrlen = sizeof *un;
        return 0;
    }
    char host[64];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host) return -1;
    memcpy(host, target, colon - target);
    host[colon - target] = 0;
    struct sockaddr_in *in = (struct sockaddr_in *)&addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) return -1;
    addrlen = sizeof *in;
    return 0;
}

/* One blocking request/echo on a new connection; the connection stays open. */
static int open_idle(double deadline) {
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (addr.ss_family == AF_INET) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    while (connect(fd, (struct sockaddr *)&addr, addrlen) < 0) {
        if (errno != EAGAIN || now() > deadline) { close(fd); return -1; }
        usleep(1000); /* a full Unix backlog */
    }
    char line[MSG + 1], in[MSG];
    snprintf(line, sizeof line, "idle%04x %010u xxxxxxxxxxxx", (unsigned)(fd & 0xffff), 0u);
    line[MSG - 1] = '\n';
    if (send(fd, line, MSG, MSG_NOSIGNAL) != MSG) { close(fd); return -1; }
    int got = 0;
    while (got < MSG) {
        ssize_t n = recv(fd, in + got, MSG - got, 0);
        if (n <= 0) { close(fd); return -1; }
        got += (int)n;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s tcp|tcp-cpr|udp|unix|unix-cpr TARGET CLIENTS DURATION WARMUP [TIMEOUT]\n", argv[0]);
        return 2;
    }
    const char *m = argv[1];
    if (!strcmp(m, "tcp")) mode = TCP;
    else if (!strcmp(m, "tcp-cpr")) mode = TCP_CPR;
    else if (!strcmp(m, "udp")) mode = UDP;
    else if (!strcmp(m, "unix")) mode = UNIX_S;
    else if (!strcmp(m, "unix-cpr")) mode = UNIX_CPR;
    else { fprintf(stderr, "unknown mode %s\n", m); return 2; }
    if (parse_target(argv[2])) { fprintf(stderr, "bad target %s\n", argv[2]); return 2; }
    int n = atoi(argv[3]);
    double duration = atof(argv[4]), warmup = atof(argv[5]);
    double timeout = argc > 6 ? atof(argv[6]) : 1.0;
    int idle = argc > 7 ? atoi(argv[7]) : 0;
    if (idle < 0 || idle > 20000 || (idle && (mode == UDP || is_cpr()))) {
        fprintf(stderr, "idle must be 0..20000, with tcp or unix only\n");
        return 2;
    }
    struct rlimit nofile;
    getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
    int *idle_fds = calloc((size_t)(idle ? idle : 1), sizeof *idle_fds);
    int idle_opened = 0;
    double idle_deadline = now() + 120;
    while (idle_opened < idle && now() < idle_deadline) {
        int fd = open_idle(idle_deadline);
        if (fd < 0) { errors++; if (errors > 1000) break; continue; }
        idle_fds[idle_opened++] = fd;
    }
    if (n < 1 || n > 10000 || duration <= 0 || duration > 600 || warmup < 0 || warmup > 60) {
        fprintf(stderr, "clients must be 1..10000, duration 0..600, warmup 0..60\n");
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct client *clients = calloc((size_t)n, sizeof *clients);
    double t_start = now();
    for (int i = 0; i < n; i++) start(&clients[i], i);
    double t_measure = t_start + warmup, t_end = t_measure + duration;
    struct epoll_event events[512];
    double next_scan = t_start + timeout / 4;
    for (;;) {
        double t = now();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            t_measure = t;
            fprintf(stderr, "measuring\n");
            fflush(stderr);
        }
        if (t >= t_end) break;
        int wait_ms = (int)((t_end - t) * 1000) + 1;
        if ((mode == UDP || addr.ss_family == AF_UNIX) && wait_ms > 10) wait_ms = 10;
        if (wait_ms > 50) wait_ms = 50;
        int k = epoll_wait(ep, events, 512, wait_ms);
        for (int i = 0; i < k; i++) on_event(clients, (int)events[i].data.u32, events[i].events);
        if (addr.ss_family == AF_UNIX) {
            t = now();
            for (int i = 0; i < n; i++)
                if (clients[i].fd < 0 && clients[i].retry_at && t >= clients[i].retry_at) {
                    clients[i].retry_at = 0;
                    start(&clients[i], i);
                }
        }
        if (mode == UDP && (t = now()) >= next_scan) {
            next_scan = t + timeout / 4;
            for (int i = 0; i < n; i++) {
                if (clients[i].fd >= 0 && t - clients[i].sent > timeout) {
                    lost++;
                    send_request(&clients[i], i);
                }
            }
        }
    }
    double elapsed = now() - t_measure;
    int served = 0;
    for (int i = 0; i < n; i++) served += clients[i].served;
    int idle_alive = 0;
    for (int i = 0; i < idle_opened; i++) {
        char c;
        ssize_t r = recv(idle_fds[i], &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) idle_alive++;
        close(idle_fds[i]);
    }
    free(idle_fds);
    printf("{\"mode\": \"%s\", \"clients\": %d, \"seconds\": %.3f, \"requests\": %llu, \"rps\": %.1f, "
           "\"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f, \"errors\": %llu, \"lost\": %llu, "
           "\"clients_served\": %d, \"idle_opened\": %d, \"idle_alive\": %d, \"nofile\": %llu}\n",
           m, n, elapsed, (unsigned long long)measured, measured / elapsed, percentile(0.50), percentile(0.99),
           percentile(1.0), (unsigned long long)errors, (unsigned long long)lost, served, idle_opened, idle_alive,
           (unsigned long long)nofile.rlim_cur);
    for (int i = 0; i < n; i++)
        if (clients[i].fd >= 0) close(clients[i].fd);
    free(clients);
    return 0;
}
