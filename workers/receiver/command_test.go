package receiver_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
)

// runningCommand is `tally receiver` started as the operator's pod spec starts it, on files
// standing in for the mounted ConfigMap and Secret.
type runningCommand struct {
	addr     string
	base     string
	keysFile string
	stop     context.CancelFunc // what SIGTERM does: signal.NotifyContext cancels the same context
	done     chan error
}

func startCommand(extraArgs ...string) *runningCommand {
	GinkgoHelper()
	dir := GinkgoT().TempDir()
	configFile := filepath.Join(dir, "source.json")
	keysFile := filepath.Join(dir, "writeKey")
	settings, err := source.EncodeConfig(newAcme())
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(configFile, settings, 0o600)).To(Succeed())
	Expect(os.WriteFile(keysFile, []byte(acmeKey+"\n"), 0o600)).To(Succeed())

	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())

	cmd := receiver.NewCommand()
	cmd.SetArgs(append([]string{"--listen", addr, "--nats-url", ns.ClientURL(),
		"--source-config", configFile, "--write-keys-file", keysFile}, extraArgs...))
	ctx, stop := context.WithCancel(context.Background())
	DeferCleanup(stop)
	rc := &runningCommand{addr: addr, base: "http://" + addr, keysFile: keysFile, stop: stop, done: make(chan error, 1)}
	go func() { rc.done <- cmd.ExecuteContext(ctx) }()

	Eventually(func() int { return statusOf(http.Get(rc.base + "/readyz")) }, 10*time.Second, 20*time.Millisecond).
		Should(Equal(http.StatusOK))
	return rc
}

// statusOf is the status of a response, or 0 when there is none.
func statusOf(resp *http.Response, err error) int {
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

var _ = Describe("tally receiver", func() {
	It("serves its source from the mounted files, follows a key rotation, and shuts down cleanly", func() {
		rc := startCommand("--reload-interval", "20ms", "--shutdown-delay", "0s")

		from := mark(acme)
		track := []byte(`{"userId":"u1","event":"Via Command"}`)
		Expect(postTo(rc.base, "/v1/track", track, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(since(acme, from)).To(HaveLen(1))

		// The kubelet updates the mounted Secret: old and new key during the rotation, then only the new.
		const newKey = "acme-rotated-key-0123456789abcde"
		Expect(os.WriteFile(rc.keysFile, []byte(acmeKey+"\n"+newKey+"\n"), 0o600)).To(Succeed())
		Eventually(func() int { return postTo(rc.base, "/v1/track", track, basic(newKey)).Status }).Should(Equal(http.StatusOK))
		Expect(postTo(rc.base, "/v1/track", track, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(os.WriteFile(rc.keysFile, []byte(newKey+"\n"), 0o600)).To(Succeed())
		Eventually(func() int { return postTo(rc.base, "/v1/track", track, basic(acmeKey)).Status }).Should(Equal(http.StatusUnauthorized))

		// A broken mount keeps the last good configuration.
		Expect(os.WriteFile(rc.keysFile, []byte("\n"), 0o600)).To(Succeed())
		Consistently(func() int { return postTo(rc.base, "/v1/track", track, basic(newKey)).Status }, 200*time.Millisecond, 20*time.Millisecond).Should(Equal(http.StatusOK))

		rc.stop() // SIGTERM
		Eventually(rc.done, 10*time.Second).Should(Receive(BeNil()))
		_, err := http.Get(rc.base + "/healthz")
		Expect(err).To(HaveOccurred(), "the server stopped listening")
	})

	It("on SIGTERM turns unready at once, keeps serving for --shutdown-delay, answers requests in flight, then exits", func() {
		rc := startCommand("--shutdown-delay", "3s")
		// A fresh connection per request, as a client reaching the pod through a Service would
		// after the receiver's Connection: close.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		track := func(body io.Reader) (*http.Response, error) {
			req, err := http.NewRequest(http.MethodPost, rc.base+"/v1/track", body)
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/json")
			req.SetBasicAuth(acmeKey, "")
			return client.Do(req)
		}
		from := mark(acme)

		By("starting a request whose body is still on its way when shutdown begins")
		slowBody, slowWriter := io.Pipe()
		slowAnswer := make(chan int, 1)
		go func() { slowAnswer <- statusOf(track(slowBody)) }()
		_, err := slowWriter.Write([]byte(`{"userId":"u-slow",`))
		Expect(err).NotTo(HaveOccurred())

		rc.stop() // SIGTERM

		By("turning /readyz to 503, so Kubernetes takes the pod out of the Service")
		Eventually(func() int { return statusOf(client.Get(rc.base + "/readyz")) }, 2*time.Second, 20*time.Millisecond).
			Should(Equal(http.StatusServiceUnavailable))

		By("still accepting events while endpoints catch up")
		resp, err := track(bytes.NewReader([]byte(`{"userId":"u-during-delay","event":"Sent During Shutdown"}`)))
		Expect(err).NotTo(HaveOccurred())
		resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		Expect(resp.Close).To(BeTrue(), "answers close the connection, so clients reconnect to a receiver that stays")
		Expect(rc.done).NotTo(Receive(), "the receiver exited during the shutdown delay")

		By("refusing new connections once the delay is over")
		Eventually(func() error {
			conn, err := net.Dial("tcp", rc.addr)
			if err == nil {
				conn.Close()
			}
			return err
		}, 10*time.Second, 50*time.Millisecond).Should(HaveOccurred())

		By("answering the request in flight only after its message is stored")
		_, err = slowWriter.Write([]byte(`"event":"Sent Across Shutdown"}`))
		Expect(err).NotTo(HaveOccurred())
		Expect(slowWriter.Close()).To(Succeed())
		Eventually(slowAnswer, 10*time.Second).Should(Receive(Equal(http.StatusOK)))
		Eventually(rc.done, 10*time.Second).Should(Receive(BeNil()))

		var events []string
		for _, m := range since(acme, from) {
			events = append(events, m.Message.Event)
		}
		Expect(events).To(ConsistOf("Sent During Shutdown", "Sent Across Shutdown"))
	})
})
