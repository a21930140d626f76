package receiver_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

func TestReceiver(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Receiver")
}

const (
	acmeSecret = "acme-shared-secret"
	acmeKey    = "acme-write-key-0123456789abcdef0"
	betaKey    = "beta-write-key-0123456789abcdef0"
)

var (
	natsOpts natsserver.Options
	ns       *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	acme     *source.Config
	beta     *source.Config
	rcv      *receiver.Receiver
	registry *prometheus.Registry
	metrics  *receiver.Metrics
	srv      *httptest.Server
)

func newAcme() *source.Config {
	return &source.Config{Namespace: "tenants", Name: "acme-web", Tenant: "acme", WriteKeys: []string{acmeKey}, IgnoredEvents: []string{"Heartbeat"},
		SharedSecrets: []string{acmeSecret}}
}

func newBeta() *source.Config {
	return &source.Config{Namespace: "tenants", Name: "beta-app", Tenant: "beta", WriteKeys: []string{betaKey}}
}

var _ = BeforeSuite(func() {
	natsOpts = natsserver.Options{StoreDir: GinkgoT().TempDir()}
	startNATS()
	natsOpts.Port = ns.Addr().(*net.TCPAddr).Port // restarts reuse it
	var err error
	nc, err = nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc, jetstream.WithPublishAsyncTimeout(2*time.Second))
	Expect(err).NotTo(HaveOccurred())
	acme, beta = newAcme(), newBeta()
	for _, src := range []*source.Config{acme, beta} {
		Expect(stream.Ensure(context.Background(), js, src.Stream(), src.StreamSettings())).To(Succeed())
	}
	registry = prometheus.NewRegistry()
	metrics = receiver.NewMetrics(registry)
	rcv, err = receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil)), Metrics: metrics, Gatherer: registry}, []*source.Config{acme, beta})
	Expect(err).NotTo(HaveOccurred())
	srv = httptest.NewServer(rcv.Handler())
	DeferCleanup(srv.Close)
})

func startNATS() {
	GinkgoHelper()
	var err error
	ns, err = natsserver.Start(natsOpts)
	Expect(err).NotTo(HaveOccurred())
}

// stopNATS shuts the embedded server down, as an outage would.
func stopNATS() {
	ns.Shutdown()
	ns.WaitForShutdown()
}

var _ = AfterSuite(func() {
	if ns != nil {
		stopNATS()
	}
})

// stored is a message read back from a source's stream.
type stored struct {
	Subject string
	MsgID   string
	Header  nats.Header
	JSON    []byte
	Message segment.Message
	Fields  map[string]any
}

// mark is the stream position before a test's requests.
func mark(src *source.Config) uint64 {
	GinkgoHelper()
	s, err := js.Stream(context.Background(), src.Stream().StreamName())
	Expect(err).NotTo(HaveOccurred())
	info, err := s.Info(context.Background())
	Expect(err).NotTo(HaveOccurred())
	return info.State.LastSeq
}

// since reads every message the source's stream received after the mark.
func since(src *source.Config, from uint64) []stored {
	GinkgoHelper()
	s, err := js.Stream(context.Background(), src.Stream().StreamName())
	Expect(err).NotTo(HaveOccurred())
	var out []stored
	for seq := from + 1; seq <= mark(src); seq++ {
		raw, err := s.GetMsg(context.Background(), seq)
		Expect(err).NotTo(HaveOccurred())
		m, err := segment.ParseNormalized(raw.Data)
		Expect(err).NotTo(HaveOccurred(), "stored message %s", raw.Data)
		var fields map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw.Data))
		dec.UseNumber()
		Expect(dec.Decode(&fields)).To(Succeed())
		out = append(out, stored{Subject: raw.Subject, MsgID: raw.Header.Get(jetstream.MsgIDHeader), Header: raw.Header, JSON: raw.Data, Message: m, Fields: fields})
	}
	return out
}

// request options
type reqOpt func(*http.Request)

func basic(key string) reqOpt {
	return func(r *http.Request) { r.SetBasicAuth(key, "") }
}

func basicWithoutColon(key string) reqOpt {
	return func(r *http.Request) {
		r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(key)))
	}
}

func header(name, value string) reqOpt {
	return func(r *http.Request) { r.Header.Set(name, value) }
}

func chunked() reqOpt {
	return func(r *http.Request) {
		r.ContentLength = -1
		r.Body = io.NopCloser(io.MultiReader(r.Body)) // hide the length so the client streams it
	}
}

func gzipped(data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write(data)
	_ = zw.Close()
	return b.Bytes()
}

// response is an answer with its JSON body.
type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func post(path string, body []byte, opts ...reqOpt) response {
	GinkgoHelper()
	return postTo(srv.URL, path, body, opts...)
}

func postTo(baseURL, path string, body []byte, opts ...reqOpt) response {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodPost, baseURL+path, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	for _, o := range opts {
		o(req)
	}
	return do(req)
}

func do(req *http.Request) response {
	GinkgoHelper()
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	r := response{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		Expect(json.Unmarshal(raw, &r.Body)).To(Succeed())
	}
	return r
}

var success = map[string]any{"success": true}

// HaveErrorCode matches a refused request's body.
func HaveErrorCode(code string) OmegaMatcher {
	return And(HaveKeyWithValue("success", false), HaveKeyWithValue("code", code), HaveKeyWithValue("message", Not(BeEmpty())))
}
