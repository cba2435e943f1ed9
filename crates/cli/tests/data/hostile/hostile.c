/* A hostile builder and its accomplice, for build_outputs.rs (issue 15, item 1):
 * ways to keep write access to an output after the daemon checked it.
 * Compiled with `gcc -static` by the test; no libc beyond what static glibc has.
 *
 *   hostile build <kind> <socket> <seconds>   (the builder, in the sandbox)
 *     Writes "good\n" to $out (kind fd, fork, mmap) or $out/a, with hard links
 *     $out/b, $dev/c if set, and (where the mounts allow) /build/keep, /tmp/keep
 *     and a stray entry in the store directory (kind links); then:
 *       fd     sends a read-write descriptor of $out over the abstract unix socket
 *              <socket> (SCM_RIGHTS) and waits for the listener's answer;
 *       links  the same with a descriptor of $out/a;
 *       fork   leaves a daemonised process (setsid, double fork) holding a
 *              read-write descriptor and a shared writable mapping of $out, which
 *              overwrites both after <seconds>;
 *       mmap   like fork, but the leftover writes through the mapping only.
 *     Exits 0 at once either way.
 *
 *   hostile netprobe <socket> <port>          (a fixed-output builder, issue 15 item 2)
 *     Prints one line per channel to stderr (the build log) and fails the build:
 *     "abstract: ok|<error>" (connect to the host's abstract socket <socket>),
 *     "loopback: ok|<error>" (TCP connect to 127.0.0.1:<port>), "procnet: seen|unseen"
 *     (whether /proc/net/unix lists @<socket>), "gateway: <status line>|<error>"
 *     (GET /f from pasta's gateway 169.254.1.1:<port>, the host's loopback).
 *
 *   hostile listen <socket> <how> <dir>       (another local user, outside)
 *     Binds <socket>, prints "ready", takes one descriptor, answers, prints "got";
 *     how = fd: keeps the descriptor; mmap: maps it shared and writable and closes
 *     it; link: also hard-links it to <dir>/keep (linkat through /proc/self/fd),
 *     printing "linked" or "nolink <errno>" (a mount of the sandbox refuses).
 *     Then waits for a line on stdin and tries to write "evil\n" through the
 *     mapping, or the descriptor and the link, printing "wrote" or "failed <errno>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static const char GOOD[] = "good\n";
static const char EVIL[] = "evil\n";

static void die(const char *what) {
    fprintf(stderr, "hostile: %s: %s\n", what, strerror(errno));
    exit(2);
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n + 1 > sizeof a->sun_path) {
        errno = ENAMETOOLONG;
        die("socket name");
    }
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int write_good(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) die(path);
    if (write(fd, GOOD, sizeof GOOD - 1) != (ssize_t)(sizeof GOOD - 1)) die("write");
    return fd;
}

static void send_fd(const char *name, int fd) {
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, name);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    if (connect(s, (struct sockaddr *)&a, len) < 0) die("connect");
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(s, &m, 0) != 1) die("sendmsg");
    /* The listener answers once it holds the descriptor (or its link or mapping). */
    if (read(s, &byte, 1) != 1) die("waiting for the listener");
    close(s);
}

static int recv_fd(int s) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    if (recvmsg(s, &m, 0) != 1) die("recvmsg");
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        die("no descriptor");
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static void leftover(int fd, unsigned seconds, int through_fd) {
    char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) die("mmap");
    pid_t p = fork();
    if (p < 0) die("fork");
    if (p > 0) return;
    setsid();
    if (fork() != 0) _exit(0);
    /* The daemonised grandchild: no terminal, no log pipe, just the output. */
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
    }
    sleep(seconds);
    memcpy(map, EVIL, sizeof EVIL - 1);
    msync(map, 4096, MS_SYNC);
    if (through_fd) pwrite(fd, EVIL, sizeof EVIL - 1, 0);
    _exit(0);
}

static int build(const char *kind, const char *sock, unsigned seconds) {
    const char *out = getenv("out");
    if (!out) {
        errno = EINVAL;
        die("$out");
    }
    if (strcmp(kind, "links") == 0) {
        if (mkdir(out, 0755) < 0) die("mkdir $out");
        char a[4096], b[4096], c[4096];
        snprintf(a, sizeof a, "%s/a", out);
        snprintf(b, sizeof b, "%s/b", out);
        int fd = write_good(a);
        if (link(a, b) < 0) die("link $out/b");
        /* Other places it can write; a separate mount refuses (EXDEV), fine. */
        char stray[4096];
        const char *store = getenv("NIX_STORE");
        snprintf(stray, sizeof stray, "%s/keep-stray", store ? store : "/nix/store");
        const char *keep[] = {"/build/keep", "/tmp/keep", stray};
        for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) {
            if (link(a, keep[i]) < 0)
                fprintf(stderr, "hostile: link %s: %s\n", keep[i], strerror(errno));
            else
                fprintf(stderr, "hostile: linked %s\n", keep[i]);
        }
        const char *dev = getenv("dev");
        if (dev) {
            if (mkdir(dev, 0755) < 0) die("mkdir $dev");
            snprintf(c, sizeof c, "%s/c", dev);
            if (link(a, c) < 0) die("link $dev/c");
        }
        /* Anyone may link or open it while the build runs. */
        if (fchmod(fd, 0666) < 0) die("fchmod");
        if (*sock) send_fd(sock, fd);
        return 0;
    }
    int fd = write_good(out);
    if (strcmp(kind, "fd") == 0) {
        send_fd(sock, fd);
    } else if (strcmp(kind, "fork") == 0) {
        leftover(fd, seconds, 1);
    } else if (strcmp(kind, "mmap") == 0) {
        leftover(fd, seconds, 0);
    } else {
        errno = EINVAL;
        die(kind);
    }
    return 0;
}

static int listen_and_write(const char *sock, const char *how, const char *dir) {
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, sock);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    if (bind(s, (struct sockaddr *)&a, len) < 0) die("bind");
    if (listen(s, 1) < 0) die("listen");
    printf("ready\n");
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0) die("accept");
    int fd = recv_fd(c);
    char *map = NULL;
    char keep[4096];
    snprintf(keep, sizeof keep, "%s/keep", dir);
    if (strcmp(how, "mmap") == 0) {
        map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) die("mmap");
        close(fd);
    } else if (strcmp(how, "link") == 0) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, keep, AT_SYMLINK_FOLLOW) < 0)
            printf("nolink %s\n", strerror(errno));
        else
            printf("linked\n");
    }
    if (write(c, "k", 1) != 1) die("answer");
    close(c);
    printf("got\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) die("waiting for the test");
    int ok;
    if (map) {
        memcpy(map, EVIL, sizeof EVIL - 1);
        ok = msync(map, 4096, MS_SYNC) == 0;
    } else {
        int w = open(keep, O_WRONLY | O_CLOEXEC);
        if (w >= 0) pwrite(w, EVIL, sizeof EVIL - 1, 0);
        ok = pwrite(fd, EVIL, sizeof EVIL - 1, 0) == (ssize_t)(sizeof EVIL - 1);
    }
    if (ok) printf("wrote\n");
    else printf("failed %s\n", strerror(errno));
    return 0;
}

static int tcp_to(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static int netprobe(const char *name, int port) {
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, name);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0 && connect(s, (struct sockaddr *)&a, len) == 0)
        fprintf(stderr, "abstract: ok\n");
    else
        fprintf(stderr, "abstract: %s\n", strerror(errno));
    if (s >= 0) close(s);

    s = tcp_to("127.0.0.1", port);
    if (s >= 0) {
        fprintf(stderr, "loopback: ok\n");
        close(s);
    } else {
        fprintf(stderr, "loopback: %s\n", strerror(errno));
    }

    char want[200];
    snprintf(want, sizeof want, "@%s", name);
    FILE *f = fopen("/proc/net/unix", "r");
    int seen = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, want)) seen = 1;
    if (f) fclose(f);
    fprintf(stderr, "procnet: %s\n", seen ? "seen" : "unseen");

    s = tcp_to("169.254.1.1", port);
    if (s < 0) {
        fprintf(stderr, "gateway: %s\n", strerror(errno));
    } else {
        const char req[] = "GET /f HTTP/1.0\r\nHost: gateway\r\n\r\n";
        char buf[256] = {0};
        ssize_t n = 0;
        if (write(s, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) n = read(s, buf, sizeof buf - 1);
        char *eol = n > 0 ? strpbrk(buf, "\r\n") : NULL;
        if (eol) *eol = 0;
        fprintf(stderr, "gateway: %s\n", n > 0 ? buf : "no answer");
        close(s);
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "netprobe") == 0)
        return netprobe(argv[2], atoi(argv[3]));
    if (argc == 5 && strcmp(argv[1], "build") == 0)
        return build(argv[2], argv[3], (unsigned)atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "listen") == 0)
        return listen_and_write(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: hostile build <kind> <socket> <seconds> | listen <socket> <how> <dir>\n");
    return 2;
}
