/*
 * /init of the utility VM: PID 1.
 *
 * Honours hcsshim's LCOW kernel command line unchanged: everything after `--` reaches us as
 * argv, `[-e PORT] [-w] [-d SHELL] program args...` (protocol.md 7.3). It mounts the base
 * filesystems, loads the kernel modules listed in /etc/modules.order, sets up cgroups and lo,
 * takes entropy from the host, then runs the program (normally /bin/vsockexec ... /bin/gcs)
 * and reaps every orphan.
 *
 * Where hcsshim's init exits when the agent exits (and so stops the VM), this one restarts
 * the agent with a bounded back-off: a crashed agent costs a reconnect, not the UVM. An agent
 * that exits with status 0 finished on purpose (a UVM shutdown with --poweroff=false): then
 * the VM powers off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>

#define RAMFS_MAGIC 0x858458f6
#define TMPFS_MAGIC 0x01021994
#define CHILD_PATH "PATH=/sbin:/usr/sbin:/bin:/usr/bin"
#define CONF "/etc/uvm-init.conf"
#define MAX_ARGS 64

static long restart_min_ms = 100, restart_max_ms = 5000, restart_stable_s = 10;
static char default_command[1024] = "/bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel info";
static struct timespec boot_start;

static long ms_since(const struct timespec *t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Plain lines on the console: the serial log is what people read when a UVM does not come up. */
static void say(const char *fmt, ...) {
    char line[512];
    va_list ap;
    int n = snprintf(line, sizeof line, "init: [%ld ms] ", ms_since(&boot_start));
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof line - 1)
        n = sizeof line - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* no console: nothing to do */
    }
}

static void die(const char *what) {
    say("fatal: %s: %s", what, strerror(errno));
    sync();
    reboot(RB_POWER_OFF);
    _exit(1);
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
    if (mkdir(dst, 0755) < 0 && errno != EEXIST)
        die(dst);
    if (mount(src, dst, type, flags, data) < 0 && !(errno == EBUSY && strcmp(type, "devtmpfs") == 0))
        die(dst);
}

/*
 * The initramfs root (rootfs) is the top of the mount tree: pivot_root cannot move it, and
 * container runtimes then fall back to chroot, which a process with CAP_SYS_CHROOT can leave.
 * Binding / onto itself gives the root a parent mount, so containers get a real pivot_root
 * (the old root unmounted from their namespace) at no cost: nothing is copied.
 */
static void leave_rootfs(void) {
    struct statfs st;
    if (statfs("/", &st) < 0 || (st.f_type != RAMFS_MAGIC && st.f_type != TMPFS_MAGIC))
        return; /* booted from a disk (root=/dev/pmem0): already a normal mount */
    if (mkdir("/.uvmroot", 0700) < 0 && errno != EEXIST)
        die("mkdir /.uvmroot");
    if (mount("/", "/.uvmroot", NULL, MS_BIND, NULL) < 0)
        die("bind / onto /.uvmroot");
    if (chdir("/.uvmroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
        die("move the root bind onto /");
    rmdir("/.uvmroot");
}

static void base_filesystems(int writable) {
    do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, NULL);
    do_mount("proc", "/proc", "proc", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL);
    symlink("/proc/self/fd", "/dev/fd");
    symlink("/proc/self/fd/0", "/dev/stdin");
    symlink("/proc/self/fd/1", "/dev/stdout");
    symlink("/proc/self/fd/2", "/dev/stderr");
    do_mount("tmpfs", "/run", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, "mode=0755");
    do_mount("tmpfs", "/tmp", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL);
    do_mount("shm", "/dev/shm", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL);
    do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620,gid=5");
    do_mount("sysfs", "/sys", "sysfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, NULL);
    if (writable) {
        const char *dirs[] = {"/run/over", "/run/over/etc", "/run/over/etc/upper", "/run/over/etc/work",
                              "/run/over/var", "/run/over/var/upper", "/run/over/var/work"};
        do_mount("tmpfs", "/run/over", "tmpfs", 0, "size=40%,mode=0755");
        for (size_t i = 1; i < sizeof dirs / sizeof *dirs; i++)
            mkdir(dirs[i], 0755);
        do_mount("overlay", "/etc", "overlay", MS_NODEV | MS_NOSUID | MS_NOEXEC,
                 "lowerdir=/etc,upperdir=/run/over/etc/upper,workdir=/run/over/etc/work");
        do_mount("overlay", "/var", "overlay", MS_NODEV | MS_NOSUID,
                 "lowerdir=/var,upperdir=/run/over/var/upper,workdir=/run/over/var/work");
    }
}

/*
 * /etc/modules.order: `platform path dep dep...` per line (path relative to
 * /lib/modules/<release>/), dependencies first. platform is `all`, `hyperv` (loaded only when
 * ACPI shows a VMBus) or `virtio` (loaded only when it does not). A module whose dependency
 * did not load is skipped without trying.
 */
#define MAX_FAILED 64
static char failed[MAX_FAILED][64];
static int nfailed;

static void mark_failed(const char *name) {
    if (nfailed < MAX_FAILED)
        snprintf(failed[nfailed++], sizeof failed[0], "%s", name);
}

static int has_failed(const char *name) {
    for (int i = 0; i < nfailed; i++)
        if (!strcmp(failed[i], name))
            return 1;
    return 0;
}

static void module_name(const char *path, char *name, size_t size) {
    const char *base = strrchr(path, '/');
    snprintf(name, size, "%s", base ? base + 1 : path);
    char *dot = strstr(name, ".ko");
    if (dot)
        *dot = 0;
    for (char *c = name; *c; c++)
        if (*c == '-')
            *c = '_';
}

/* "hyperv" when ACPI describes a VMBus (what hv_vmbus binds to), "virtio" when ACPI exists
 * without one, NULL (load everything) when there is no ACPI to ask. */
static const char *platform(void) {
    DIR *acpi = opendir("/sys/bus/acpi/devices");
    if (!acpi)
        return NULL;
    const char *found = "virtio";
    struct dirent *d;
    while ((d = readdir(acpi)))
        if (!strncasecmp(d->d_name, "VMBUS:", 6))
            found = "hyperv";
    closedir(acpi);
    return found;
}

/* Loads the modules before the `background` line (background == 0) or after it. */
static void load_modules(int background) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *here = platform();
    int in_section = !background;
    FILE *list = fopen("/etc/modules.order", "re");
    if (!list)
        return;
    char dir[256], line[1024], path[1400], name[64];
    FILE *rel = fopen("/etc/modules.release", "re");
    if (!rel || !fgets(dir, sizeof dir, rel)) {
        say("no /etc/modules.release: modules not loaded");
        fclose(list);
        if (rel)
            fclose(rel);
        return;
    }
    fclose(rel);
    dir[strcspn(dir, "\n")] = 0;
    int loaded = 0, absent = 0, other = 0;
    while (fgets(line, sizeof line, list)) {
        line[strcspn(line, "\n")] = 0;
        if (!strcmp(line, "background")) {
            if (!background)
                break;
            in_section = 1;
            continue;
        }
        if (!in_section)
            continue;
        char *where = strtok(line, " ");
        char *file = strtok(NULL, " ");
        if (!file)
            continue;
        if (here && strcmp(where, "all") && strcmp(where, here)) {
            other++;
            continue;
        }
        module_name(file, name, sizeof name);
        int skip = 0;
        for (char *dep = strtok(NULL, " "); dep; dep = strtok(NULL, " "))
            skip |= has_failed(dep);
        if (skip) {
            mark_failed(name);
            absent++;
            continue;
        }
        snprintf(path, sizeof path, "/lib/modules/%s/%s", dir, file);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("module %s: %s", file, strerror(errno));
            mark_failed(name);
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) == 0)
            loaded++;
        else if (errno == ENODEV || errno == ENXIO) {
            absent++; /* the driver's hardware is not there (Hyper-V drivers under QEMU, say) */
            mark_failed(name);
        } else if (errno != EEXIST) {
            say("module %s: %s", file, strerror(errno));
            mark_failed(name);
        }
        close(fd);
    }
    fclose(list);
    say("modules for %s%s: %d loaded, %d skipped without their hardware, %d for the other platform, %ld ms",
        here ? here : "any platform", background ? " (background)" : "", loaded, absent, other, ms_since(&t0));
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int cmdline_has(const char *token) {
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (strcmp(tok, "--") == 0)
            break;
        if (strcmp(tok, token) == 0)
            return 1;
    }
    return 0;
}

static int bpf_cgroup_devices(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.query.target_fd = fd;
    attr.query.attach_type = BPF_CGROUP_DEVICE;
    int ok = syscall(SYS_bpf, BPF_PROG_QUERY, &attr, sizeof attr) == 0 || (errno != ENOSYS && errno != EINVAL);
    close(fd);
    return ok;
}

/* cgroup v2 with every controller enabled for the agent's /gcs and /pods; v1 as a fallback. */
static void setup_cgroups(void) {
    if (!cmdline_has("hcsshim.cgroup=v1")) {
        if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NODEV | MS_NOSUID | MS_NOEXEC, "nsdelegate") == 0) {
            char controllers[512];
            int fd = open("/sys/fs/cgroup/cgroup.controllers", O_RDONLY | O_CLOEXEC);
            ssize_t n = fd < 0 ? -1 : read(fd, controllers, sizeof controllers - 1);
            if (fd >= 0)
                close(fd);
            if (n >= 0 && bpf_cgroup_devices("/sys/fs/cgroup")) {
                controllers[n] = 0;
                for (char *c = strtok(controllers, " \n"); c; c = strtok(NULL, " \n")) {
                    char plus[64];
                    snprintf(plus, sizeof plus, "+%s", c);
                    if (write_file("/sys/fs/cgroup/cgroup.subtree_control", plus) < 0)
                        say("cgroup controller %s: %s", c, strerror(errno));
                }
                return;
            }
            umount("/sys/fs/cgroup");
            say("cgroup v2 without device programs: falling back to v1");
        }
    }
    do_mount("tmpfs", "/sys/fs/cgroup", "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, "mode=0755");
    FILE *f = fopen("/proc/cgroups", "re");
    char line[256];
    int mounted = 0;
    while (f && fgets(line, sizeof line, f)) {
        char name[64];
        int hier, num, enabled;
        if (line[0] == '#' || sscanf(line, "%63s %d %d %d", name, &hier, &num, &enabled) != 4 || !enabled)
            continue;
        char dir[128];
        snprintf(dir, sizeof dir, "/sys/fs/cgroup/%s", name);
        mkdir(dir, 0755);
        if (mount("cgroup", dir, "cgroup", MS_NODEV | MS_NOSUID | MS_NOEXEC, name) == 0)
            mounted++;
    }
    if (f)
        fclose(f);
    if (!mounted)
        die("no cgroup hierarchy could be mounted");
}

static void loopback_up(void) {
    int families[] = {AF_INET, AF_INET6};
    for (int i = 0; i < 2; i++) {
        int s = socket(families[i], SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            continue; /* EAFNOSUPPORT: no IPv6 */
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strcpy(ifr.ifr_name, "lo");
        ifr.ifr_flags = IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
            say("lo up: %s", strerror(errno));
        close(s);
    }
}

/* The host writes random bytes on the entropy port and closes: credit them to the pool. */
static void take_entropy(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_HOST};
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        say("entropy port %u: %s", port, strerror(errno));
        if (s >= 0)
            close(s);
        return;
    }
    int rnd = open("/dev/random", O_RDWR | O_CLOEXEC);
    struct {
        struct rand_pool_info info;
        unsigned char buf[4096];
    } pool;
    size_t total = 0;
    ssize_t n;
    while (rnd >= 0 && (n = read(s, pool.buf, sizeof pool.buf)) > 0) {
        pool.info.entropy_count = n * 8;
        pool.info.buf_size = n;
        if (ioctl(rnd, RNDADDENTROPY, &pool) < 0) {
            say("RNDADDENTROPY: %s", strerror(errno));
            break;
        }
        total += n;
    }
    if (rnd >= 0)
        close(rnd);
    close(s);
    say("entropy: %zu bytes from port %u", total, port);
}

static void read_conf(void) {
    FILE *f = fopen(CONF, "re");
    char line[1100];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *eq = strchr(line, '=');
        if (!eq || line[0] == '#')
            continue;
        *eq++ = 0;
        if (!strcmp(line, "restart_min_ms"))
            restart_min_ms = atol(eq);
        else if (!strcmp(line, "restart_max_ms"))
            restart_max_ms = atol(eq);
        else if (!strcmp(line, "restart_stable_s"))
            restart_stable_s = atol(eq);
        else if (!strcmp(line, "default"))
            snprintf(default_command, sizeof default_command, "%s", eq);
    }
    if (f)
        fclose(f);
}

/* A supervised program: restarted with a doubling back-off when it dies. */
struct service {
    const char *name;
    char **argv;
    pid_t pid;
    long backoff_ms;
    struct timespec started;
    struct timespec due; /* when a restart is due (pid == 0) */
    int restarts;
};

static sigset_t all_signals;

/* The rest of the modules, in a child at idle priority: the agent starts meanwhile and gets
 * the CPU first; the child is reaped like any orphan. */
static void load_background_modules(void) {
    pid_t pid = fork();
    if (pid != 0) {
        if (pid < 0)
            load_modules(1); /* cannot fork: load them here and now */
        return;
    }
    struct sched_param idle = {0};
    if (sched_setscheduler(0, SCHED_IDLE, &idle) < 0)
        say("SCHED_IDLE: %s", strerror(errno));
    load_modules(1);
    int fd = open("/run/modules.loaded", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    _exit(0);
}

static const char *uptime(void) {
    static char text[32];
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
    if (fd >= 0)
        close(fd);
    text[n > 0 ? n : 0] = 0;
    text[strcspn(text, " ")] = 0;
    return text;
}

static void launch(struct service *svc) {
    pid_t pid = fork();
    if (pid < 0) {
        say("fork %s: %s", svc->name, strerror(errno));
        svc->pid = 0;
        return;
    }
    if (pid == 0) {
        char *envp[] = {CHILD_PATH, NULL};
        sigprocmask(SIG_UNBLOCK, &all_signals, NULL);
        setsid();
        setpgid(0, 0);
        execvpe(svc->argv[0], svc->argv, envp);
        say("exec %s: %s", svc->argv[0], strerror(errno));
        _exit(127);
    }
    svc->pid = pid;
    clock_gettime(CLOCK_MONOTONIC, &svc->started);
    say("started %s (pid %d) at uptime %s s", svc->name, pid, uptime());
}

static void schedule_restart(struct service *svc, int status) {
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof how, "exit status %d", WEXITSTATUS(status));
    long ran_ms = ms_since(&svc->started);
    if (ran_ms >= restart_stable_s * 1000)
        svc->backoff_ms = restart_min_ms; /* it ran fine for a while: a fresh failure */
    svc->restarts++;
    say("%s (pid %d) ended after %ld ms: %s; restart %d in %ld ms", svc->name, svc->pid, ran_ms, how,
        svc->restarts, svc->backoff_ms);
    svc->pid = 0;
    clock_gettime(CLOCK_MONOTONIC, &svc->due);
    svc->due.tv_sec += svc->backoff_ms / 1000;
    svc->due.tv_nsec += (svc->backoff_ms % 1000) * 1000000;
    if (svc->due.tv_nsec >= 1000000000) {
        svc->due.tv_sec++;
        svc->due.tv_nsec -= 1000000000;
    }
    svc->backoff_ms = svc->backoff_ms * 2 > restart_max_ms ? restart_max_ms : svc->backoff_ms * 2;
}

static char **split_words(char *text) {
    static char *words[MAX_ARGS + 1];
    int n = 0;
    for (char *w = strtok(text, " \t"); w && n < MAX_ARGS; w = strtok(NULL, " \t"))
        words[n++] = w;
    words[n] = NULL;
    return words;
}

int main(int argc, char **argv) {
    clock_gettime(CLOCK_MONOTONIC, &boot_start);
    if (getpid() != 1) {
        fprintf(stderr, "init: must run as PID 1\n");
        return 1;
    }
    sigfillset(&all_signals);
    sigprocmask(SIG_BLOCK, &all_signals, NULL); /* SIGCHLD is taken with sigtimedwait */

    struct rlimit nofile = {1024, 1048576};
    setrlimit(RLIMIT_NOFILE, &nofile);

    leave_rootfs();
    read_conf();
    char *debug_shell = NULL;
    long entropy_port = 0;
    int writable = 0, opt;
    char **child;
    if (argc <= 1) {
        child = split_words(default_command); /* no `--` on the kernel command line */
        char **cmd = child;
        if (cmd[0] && !strcmp(cmd[0], "-e") && cmd[1]) {
            entropy_port = atol(cmd[1]);
            child = cmd + 2;
        }
    } else {
        while ((opt = getopt(argc, argv, "+d:e:w")) != -1) {
            if (opt == 'd')
                debug_shell = optarg;
            else if (opt == 'e') {
                entropy_port = atol(optarg);
                if (entropy_port <= 0) {
                    say("-e %s: invalid port", optarg);
                    entropy_port = 0;
                }
            } else if (opt == 'w')
                writable = 1;
        }
        child = argv + optind;
    }
    base_filesystems(writable);
    say("started; kernel up %s s", uptime());
    load_modules(0);
    setup_cgroups();
    loopback_up();
    if (entropy_port)
        take_entropy((unsigned)entropy_port);

    struct service services[2];
    int count = 0;
    if (child[0])
        services[count++] = (struct service){.name = child[0], .argv = child, .backoff_ms = restart_min_ms};
    if (debug_shell) {
        static char *shell_argv[2];
        shell_argv[0] = debug_shell;
        services[count++] = (struct service){.name = debug_shell, .argv = shell_argv, .backoff_ms = restart_min_ms};
    }
    if (!count)
        say("nothing to run");
    for (int i = 0; i < count; i++)
        launch(&services[i]);
    load_background_modules();

    for (;;) {
        /* Sleep until a child exits or the next restart is due. */
        long wait_ms = 60000;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (int i = 0; i < count; i++) {
            if (services[i].pid)
                continue;
            long due = (services[i].due.tv_sec - now.tv_sec) * 1000 + (services[i].due.tv_nsec - now.tv_nsec) / 1000000;
            if (due <= 0) {
                launch(&services[i]);
                continue;
            }
            if (due < wait_ms)
                wait_ms = due;
        }
        struct timespec timeout = {wait_ms / 1000, (wait_ms % 1000) * 1000000};
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigtimedwait(&chld, NULL, &timeout);
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (int i = 0; i < count; i++) {
                if (services[i].pid != pid)
                    continue;
                if (i == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                    say("%s finished (exit status 0): powering off", services[i].name);
                    sync();
                    reboot(RB_POWER_OFF);
                }
                schedule_restart(&services[i], status);
            }
            /* anything else was an orphan: reaped, nothing more to do */
        }
    }
}
