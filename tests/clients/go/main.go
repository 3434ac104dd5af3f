// A Go client of the OpenAI chat completions API using only the standard library (net/http
// over crypto/tls), for the Go TLS probes of agentwatch. It makes -calls requests on one
// keep-alive connection and reads every response to the end. Nothing is printed of the
// prompt or completion: only the status of each call.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	baseURL := flag.String("base-url", "", "https://host:port of the API")
	caFile := flag.String("ca", "", "PEM file of the CA that signed the server's certificate")
	calls := flag.Int("calls", 1, "number of calls")
	stream := flag.Bool("stream", false, "stream the responses (SSE, with usage in the last chunk)")
	model := flag.String("model", "gpt-4o-mini", "model name")
	tag := flag.String("tag", "", "x-test-tag header (lets the mock log each call)")
	wait := flag.Bool("wait", false, "read one line from stdin before the first call")
	connect := flag.String("connect", "", "host:port to dial instead of the URL's (the URL's host stays the SNI)")
	pad := flag.Int("pad", 0, "bytes of filler in each prompt (a request as large as an agent's)")
	flag.Parse()

	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail("reading the CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *caFile)
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	if *connect != "" {
		dialer := &net.Dialer{}
		transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, *connect)
		}
	}
	client := &http.Client{Transport: transport}
	if *wait {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	for i := 0; i < *calls; i++ {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"call %d %s"}]`, *model, i, strings.Repeat("x", *pad))
		if *stream {
			body += `,"stream":true,"stream_options":{"include_usage":true}`
		}
		body += "}"
		req, err := http.NewRequest("POST", strings.TrimRight(*baseURL, "/")+"/v1/chat/completions", bytes.NewBufferString(body))
		if err != nil {
			fail("request: %v", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer test-key")
		if *tag != "" {
			req.Header.Set("x-test-tag", *tag)
		}
		resp, err := client.Do(req)
		if err != nil {
			fail("call %d: %v", i, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			fail("call %d: reading the response: %v", i, err)
		}
		if resp.StatusCode != 200 {
			fail("call %d: HTTP %d", i, resp.StatusCode)
		}
		fmt.Printf("call %d: %s, %d bytes\n", i, resp.Proto, n)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go client: "+format+"\n", args...)
	os.Exit(1)
}
