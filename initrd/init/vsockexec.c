/*
 * /bin/vsockexec [-r] [-i PORT] [-o PORT] [-e PORT] program [args...]
 *
 * Runs program with its stdin/stdout/stderr connected to vsock ports of the host (CID 2), as
 * hcsshim's vsockexec does (protocol.md 7.4): `-e 109` sends the agent's JSON log stream to
 * the host.
 *
 * Default mode: connect, dup2 onto fds 0/1/2, exec; a failed connect exits 1.
 * -r (relay): the program writes into a pipe; we copy it to the port and, when the host side
 * goes away, dial again every 100 ms and resend what was not written, so the log stream
 * survives a host reconnect. stdin (-i) is not relayed in this mode.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int dial(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_HOST};
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int saved = errno;
        close(s);
        errno = saved;
        return -1;
    }
    return s;
}

static int dial_forever(unsigned port) {
    for (;;) {
        int s = dial(port);
        if (s >= 0)
            return s;
        struct timespec pause = {0, 100 * 1000000};
        nanosleep(&pause, NULL);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: vsockexec [-r] [-i port] [-o port] [-e port] program [args...]\n");
    exit(2);
}

static unsigned parse_port(const char *text) {
    char *end;
    unsigned long port = strtoul(text, &end, 0);
    if (*end || port > 0xFFFFFFFFul)
        usage();
    return (unsigned)port;
}

static int relay(unsigned out_port, int use_stdout, int use_stderr, char **argv) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        perror("vsockexec: pipe");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("vsockexec: fork");
        return 1;
    }
    if (child == 0) {
        if (use_stdout)
            dup2(pipefd[1], 1);
        if (use_stderr)
            dup2(pipefd[1], 2);
        execvp(argv[0], argv);
        fprintf(stderr, "vsockexec: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    signal(SIGPIPE, SIG_IGN);
    int sock = dial_forever(out_port);
    char buf[65536];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(sock, buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                close(sock); /* the host went away: dial again, resend the rest of this chunk */
                sock = dial_forever(out_port);
                continue;
            }
            off += w;
        }
    }
    close(sock);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

int main(int argc, char **argv) {
    unsigned ports[3] = {0, 0, 0};
    int opt, reconnect = 0;
    while ((opt = getopt(argc, argv, "+ri:o:e:")) != -1) {
        switch (opt) {
        case 'r': reconnect = 1; break;
        case 'i': ports[0] = parse_port(optarg); break;
        case 'o': ports[1] = parse_port(optarg); break;
        case 'e': ports[2] = parse_port(optarg); break;
        default: usage();
        }
    }
    if (optind >= argc)
        usage();
    char **program = argv + optind;
    if (reconnect) {
        if (!ports[1] && !ports[2])
            usage();
        unsigned port = ports[2] ? ports[2] : ports[1];
        return relay(port, ports[1] == port, ports[2] == port, program);
    }
    int socks[3] = {-1, -1, -1};
    for (int i = 0; i < 3; i++) {
        if (!ports[i])
            continue;
        for (int j = 0; j < i; j++)
            if (ports[j] == ports[i])
                socks[i] = socks[j];
        if (socks[i] < 0) {
            socks[i] = dial(ports[i]);
            if (socks[i] < 0) {
                fprintf(stderr, "vsockexec: connect to port %u: %s\n", ports[i], strerror(errno));
                return 1;
            }
        }
    }
    for (int i = 0; i < 3; i++)
        if (socks[i] >= 0 && dup2(socks[i], i) < 0) {
            perror("vsockexec: dup2");
            return 1;
        }
    execvp(program[0], program);
    fprintf(stderr, "vsockexec: exec %s: %s\n", program[0], strerror(errno));
    return 127;
}
