/* The residual fd-swap race (docs/host-bypass.md, threat model): a thread swaps a host socket
 * onto fd N while another thread's connect(N) on a namespace socket is being CONTINUEd.
 * usage: fdswap ALLOWED_PORT DENIED_PORT SECONDS -> one JSON line */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static int host_fd, ns_fd, slot;

static void *swapper(void *arg) {
    (void)arg;
    while (!stop) {
        dup2(host_fd, slot);
        dup2(ns_fd, slot);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    struct sockaddr_in a = {0}, d = {0};
    a.sin_family = d.sin_family = AF_INET;
    a.sin_addr.s_addr = d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(atoi(argv[1]));
    d.sin_port = htons(atoi(argv[2]));
    double seconds = atof(argv[3]);
    long escapes = 0, tries = 0, rounds = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 > seconds) break;
        host_fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(host_fd, (struct sockaddr *)&a, sizeof a) != 0) return 3; /* bypassed: a host socket */
        ns_fd = socket(AF_INET, SOCK_STREAM, 0);
        slot = dup(ns_fd);
        stop = 0;
        pthread_t t;
        pthread_create(&t, NULL, swapper, NULL);
        struct sockaddr unspec = {0};
        for (int i = 0; i < 200; i++, tries++) {
            connect(slot, &unspec, sizeof unspec);            /* may disconnect the host socket */
            if (connect(slot, (struct sockaddr *)&d, sizeof d) == 0) escapes++;
        }
        stop = 1;
        pthread_join(t, NULL);
        close(slot); close(ns_fd); close(host_fd);
        rounds++;
    }
    printf("{\"rounds\": %ld, \"tries\": %ld, \"connect_ok\": %ld}\n", rounds, tries, escapes);
    return 0;
}
