// An independent HTTP/2 server in front of the mock: Go's net/http server (HTTP/2 by ALPN on
// TLS, the standard library's own framing) with an httputil.ReverseProxy to the plain-HTTP
// mock. The bodies are the mock's, so its request log stays the record of what was served;
// the frames the client reads are Go's. Standard library only: built offline by the tests.
//
//	goserver -backend http://127.0.0.1:PORT -cert server.pem -key server-key.pem
//
// Prints "listening on 127.0.0.1:PORT" once it accepts connections; stops by itself after
// -exit-after-secs.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"
)

func main() {
	backend := flag.String("backend", "", "the plain-HTTP mock, http://127.0.0.1:PORT")
	cert := flag.String("cert", "", "server certificate chain, PEM")
	key := flag.String("key", "", "server key, PEM")
	exitAfter := flag.Int("exit-after-secs", 300, "stop by itself after this many seconds")
	flag.Parse()

	target, err := url.Parse(*backend)
	if err != nil || *backend == "" {
		log.Fatalf("-backend %q: %v", *backend, err)
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("loading %s and %s: %v", *cert, *key, err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	// Streams are passed on as they come (Go also does so by itself for text/event-stream).
	proxy.FlushInterval = -1
	server := &http.Server{
		Handler:   proxy,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2", "http/1.1"}},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()
	time.AfterFunc(time.Duration(*exitAfter)*time.Second, func() { os.Exit(0) })
	if err := server.ServeTLS(ln, "", ""); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
}
