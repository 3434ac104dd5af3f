// A client whose TLS is OpenSSL linked statically into a stripped executable (no TLS symbols
// left for uprobes): N OpenAI chat completions on one kept-alive connection, with SSL_write
// and SSL_read. The tests build it with `gcc -static -s … -lssl -lcrypto` (Debian's libssl.a).
//
// usage: client PORT CA_FILE TAG CALLS
#define _GNU_SOURCE // strcasestr
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "%s failed\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

// Reads one HTTP/1.1 response (Content-Length or chunked body) into buf; returns its length.
static long read_response(SSL *ssl, char *buf, size_t cap) {
    size_t have = 0;
    for (;;) {
        if (have + 1 >= cap)
            return -1;
        int r = SSL_read(ssl, buf + have, (int)(cap - 1 - have));
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        size_t head = (size_t)(end + 4 - buf);
        *end = 0;
        char *cl = strcasestr(buf, "\ncontent-length:");
        int chunked = strcasestr(buf, "\ntransfer-encoding: chunked") != NULL;
        *end = '\r';
        if (cl && have >= head + (size_t)atol(cl + 16))
            return (long)have;
        if (chunked && have >= head + 5 && memcmp(buf + have - 5, "0\r\n\r\n", 5) == 0)
            return (long)have;
        if (!cl && !chunked)
            return -1;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT CA_FILE TAG CALLS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), calls = atoi(argv[4]);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_load_verify_locations(ctx, argv[2], NULL) != 1)
        return fail("loading the CA");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "127.0.0.1");
    if (SSL_connect(ssl) != 1)
        return fail("the TLS handshake");
    static char buf[1 << 20];
    for (int i = 0; i < calls; i++) {
        char body[256], req[1024];
        int n = snprintf(body, sizeof body,
                         "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\","
                         "\"content\":\"say hi %d\"}]}",
                         i);
        int m = snprintf(req, sizeof req,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         "Authorization: Bearer test\r\nContent-Type: application/json\r\n"
                         "x-test-tag: %s\r\nContent-Length: %d\r\n\r\n%s",
                         port, argv[3], n, body);
        if (SSL_write(ssl, req, m) != m)
            return fail("SSL_write");
        long got = read_response(ssl, buf, sizeof buf);
        if (got < 0)
            return fail("reading the response");
        fwrite(buf, 1, (size_t)got, stdout);
        putchar('\n');
    }
    SSL_shutdown(ssl);
    return 0;
}
