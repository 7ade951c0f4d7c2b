/* The VM's python3 as a native client of the local Azure's warm interpreter
 * (warmpython_server.py): the same protocol and behaviour as warmpython_client.py, without an
 * interpreter of its own to start. warmpython.py compiles it once per local Azure when the host
 * has a C compiler, and writes its configuration (socket, real interpreter, the VM's tag) into
 * each VM's copy, in place of the CONFIG block below.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 64
#define CONFIG_SIZE 1024
#define MARKER_LEN 18 /* "MILAB-WARM-CONFIG\n" */

/* "MILAB-WARM-CONFIG\n" then, once written: socket \0 real interpreter \0 tag \0 */
volatile char CONFIG[CONFIG_SIZE] = "MILAB-WARM-CONFIG\n";

extern char **environ;
static int sock = -1;
static char *real_python;
static char **user_argv;

static void run_real(void) {
    user_argv[0] = real_python;
    execv(real_python, user_argv);
    fprintf(stderr, "python3: %s: %s\n", real_python, strerror(errno));
    _exit(127);
}

static void forward(int signum) {
    char text[32];
    int saved = errno;
    int n = snprintf(text, sizeof text, "kill %d", signum);
    if (send(sock, text, (size_t)n, MSG_NOSIGNAL) < 0) { /* the server is gone: nothing to do */ }
    errno = saved;
}

/* Append bytes to a growing buffer (the request). */
static char *buf;
static size_t len, cap;
static void put(const char *data, size_t n) {
    if (len + n + 1 > cap) {
        cap = (len + n + 1) * 2;
        buf = realloc(buf, cap);
        if (!buf) run_real();
    }
    memcpy(buf + len, data, n);
    len += n;
}
static void field(const char *text) { put(text, strlen(text) + 1); }

int main(int argc, char **argv) {
    static char config[CONFIG_SIZE];
    for (int i = 0; i < CONFIG_SIZE; i++) config[i] = CONFIG[i];
    char *socket_path = config + MARKER_LEN;
    real_python = socket_path + strlen(socket_path) + 1;
    char *tag = real_python + strlen(real_python) + 1;
    user_argv = argv;
    if (!*socket_path || !*real_python) {
        fprintf(stderr, "python3: this client was not configured\n");
        return 127;
    }
    if (isatty(0) || isatty(1) || isatty(2)) run_real();  /* a terminal: the real one */

    int fds[MAX_FDS + 2], nfds = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) run_real();
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        int fd = atoi(entry->d_name);
        if (fd == dirfd(dir)) continue;
        if (nfds == MAX_FDS) { closedir(dir); run_real(); }
        fds[nfds++] = fd;
    }
    closedir(dir);
    for (int i = 1; i < nfds; i++)  /* sorted, as the server gets them */
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
            int t = fds[j]; fds[j] = fds[j - 1]; fds[j - 1] = t;
        }
    if (nfds < 3 || fds[0] != 0 || fds[1] != 1 || fds[2] != 2) run_real();

    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (sock < 0 || strlen(socket_path) >= sizeof address.sun_path) run_real();
    strcpy(address.sun_path, socket_path);
    if (connect(sock, (struct sockaddr *)&address, sizeof address) < 0) run_real();
    /* Its mount namespace (a VM's private /usr, /etc and /tmp) and working directory. */
    int namespace = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (namespace < 0 || cwd < 0) run_real();
    fds[nfds] = namespace;
    fds[nfds + 1] = cwd;
    mode_t mask = umask(0);
    umask(mask);

    char number[32], list[MAX_FDS * 12] = "";
    field("warm2");
    field(tag);
    snprintf(number, sizeof number, "%u", (unsigned)mask);
    field(number);
    for (int i = 0; i < nfds; i++) {
        snprintf(number, sizeof number, i ? ",%d" : "%d", fds[i]);
        strcat(list, number);
    }
    field(list);
    snprintf(number, sizeof number, "%d", argc - 1);
    field(number);
    for (int i = 1; i < argc; i++) field(argv[i]);
    for (char **env = environ; *env; env++) field(*env);
    len--;  /* fields are separated, not ended, by NUL */

    struct iovec io = {.iov_base = buf, .iov_len = len};
    union { char space[CMSG_SPACE(sizeof(int) * (MAX_FDS + 2))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * (nfds + 2))};
    struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof(int) * (nfds + 2));
    memcpy(CMSG_DATA(rights), fds, sizeof(int) * (nfds + 2));
    if (sendmsg(sock, &message, MSG_NOSIGNAL) < 0) run_real();
    close(namespace);
    close(cwd);

    char answer[64];
    ssize_t got = recv(sock, answer, sizeof answer - 1, 0);
    if (got != 3 || memcmp(answer, "run", 3) != 0) run_real();

    int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM};
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) {
        struct sigaction old, action = {.sa_handler = forward};
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESTART;
        if (sigaction(forwarded[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(forwarded[i], &action, NULL);
    }
    do {
        got = recv(sock, answer, sizeof answer - 1, 0);
    } while (got < 0 && errno == EINTR);
    if (got > 0) {
        answer[got] = 0;
        if (strncmp(answer, "exit ", 5) == 0) _exit(atoi(answer + 5));
        if (strncmp(answer, "signal ", 7) == 0) {
            int signum = atoi(answer + 7);
            signal(signum, SIG_DFL);
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, signum);
            sigprocmask(SIG_UNBLOCK, &set, NULL);
            kill(getpid(), signum);  /* ends as the program ended, as a shell sees */
            _exit(128 + signum);
        }
    }
    fprintf(stderr, "python3: the local Azure's interpreter stopped\n");
    _exit(1);
}
