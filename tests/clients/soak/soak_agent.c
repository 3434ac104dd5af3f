/* One agent of `cargo xtask soak`: a long-lived process on the system's libssl (probed like any
 * dynamically linked agent) making Chat Completions calls over one keep-alive TLS connection
 * to the mock, one every INTERVAL_MS (with jitter), and running a short-lived tool process
 * (/bin/true, a child: part of its session) every TOOL_EVERY calls.
 *
 *   soak_agent PORT CA_PEM CALLS INTERVAL_MS TOOL_EVERY TAG
 *
 * No SNI (an IP address, as curl sends to https://127.0.0.1): the daemon decides coverage at
 * the first contact, and a name it does not know as an LLM host is not one.
 *
 * Exits 0 once every call had a 200; non-zero on the first failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static SSL *dial(SSL_CTX *ctx, int port, int *fd) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (*fd < 0 || connect(*fd, (struct sockaddr *)&a, sizeof a) != 0) return NULL;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, *fd);
    if (SSL_connect(ssl) != 1) { SSL_free(ssl); close(*fd); return NULL; }
    return ssl;
}

/* Reads one response (head, then content-length bytes of body). Returns the status or -1. */
static int read_response(SSL *ssl) {
    static char buf[1 << 16];
    size_t have = 0;
    char *end = NULL;
    while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
        if (have == sizeof buf) return -1;
        int n = SSL_read(ssl, buf + have, (int)(sizeof buf - have));
        if (n <= 0) return -1;
        have += (size_t)n;
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1) return -1;
    long len = 0;
    for (char *p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) len = atol(p + 15);
    }
    size_t head = (size_t)(end - buf) + 4;
    long body = (long)(have - head);
    while (body < len) {
        int n = SSL_read(ssl, buf, sizeof buf);
        if (n <= 0) return -1;
        body += n;
    }
    return status;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s PORT CA CALLS INTERVAL_MS TOOL_EVERY TAG\n", argv[0]); return 2; }
    int port = atoi(argv[1]), calls = atoi(argv[3]), interval = atoi(argv[4]), tool_every = atoi(argv[5]);
    const char *tag = argv[6];
    srand((unsigned)getpid());
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, argv[2], NULL) != 1) { fprintf(stderr, "bad CA\n"); return 2; }
    const char *body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char req[1024];
    int rlen = snprintf(req, sizeof req,
                        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                        "x-test-tag: %s\r\ncontent-length: %zu\r\n\r\n%s", tag, strlen(body), body);
    int fd = -1;
    SSL *ssl = NULL;
    for (int i = 0; i < calls; i++) {
        int status = -1;
        for (int attempt = 0; attempt < 2 && status < 0; attempt++) {
            if (!ssl && !(ssl = dial(ctx, port, &fd))) { fprintf(stderr, "%s: connect failed\n", tag); return 1; }
            if (SSL_write(ssl, req, rlen) == rlen) status = read_response(ssl);
            if (status < 0) { SSL_free(ssl); close(fd); ssl = NULL; } /* closed while idle: dial again */
        }
        if (status != 200) { fprintf(stderr, "%s: call %d: status %d\n", tag, i, status); return 1; }
        if (tool_every > 0 && (i + 1) % tool_every == 0) {
            pid_t pid = fork();
            if (pid == 0) { execl("/bin/true", "true", (char *)NULL); _exit(127); }
            if (pid > 0) waitpid(pid, NULL, 0);
        }
        if (i + 1 < calls) {
            long ms = interval / 2 + rand() % (interval + 1);
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (ssl) { SSL_shutdown(ssl); SSL_free(ssl); close(fd); }
    return 0;
}
