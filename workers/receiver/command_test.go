package receiver_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("tally receiver", func() {
	It("serves its source from the mounted files, follows a key rotation, and shuts down cleanly", func() {
		dir := GinkgoT().TempDir()
		configFile := filepath.Join(dir, "source.json")
		keysFile := filepath.Join(dir, "writeKey")
		settings, err := source.EncodeConfig(newAcme())
		Expect(err).NotTo(HaveOccurred())
		Expect(os.WriteFile(configFile, settings, 0o600)).To(Succeed())
		Expect(os.WriteFile(keysFile, []byte(acmeKey+"\n"), 0o600)).To(Succeed())

		ln, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		addr := ln.Addr().String()
		Expect(ln.Close()).To(Succeed())
		base := "http://" + addr

		cmd := receiver.NewCommand()
		cmd.SetArgs([]string{"--listen", addr, "--nats-url", ns.ClientURL(),
			"--source-config", configFile, "--write-keys-file", keysFile, "--reload-interval", "20ms"})
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		done := make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()

		Eventually(func() int {
			resp, err := http.Get(base + "/readyz")
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}, 10*time.Second, 20*time.Millisecond).Should(Equal(http.StatusOK))

		from := mark(acme)
		track := []byte(`{"userId":"u1","event":"Via Command"}`)
		Expect(postTo(base, "/v1/track", track, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(since(acme, from)).To(HaveLen(1))

		// The kubelet updates the mounted Secret: old and new key during the rotation, then only the new.
		const newKey = "acme-rotated-key-0123456789abcde"
		Expect(os.WriteFile(keysFile, []byte(acmeKey+"\n"+newKey+"\n"), 0o600)).To(Succeed())
		Eventually(func() int { return postTo(base, "/v1/track", track, basic(newKey)).Status }).Should(Equal(http.StatusOK))
		Expect(postTo(base, "/v1/track", track, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(os.WriteFile(keysFile, []byte(newKey+"\n"), 0o600)).To(Succeed())
		Eventually(func() int { return postTo(base, "/v1/track", track, basic(acmeKey)).Status }).Should(Equal(http.StatusUnauthorized))

		// A broken mount keeps the last good configuration.
		Expect(os.WriteFile(keysFile, []byte("\n"), 0o600)).To(Succeed())
		Consistently(func() int { return postTo(base, "/v1/track", track, basic(newKey)).Status }, 200*time.Millisecond, 20*time.Millisecond).Should(Equal(http.StatusOK))

		stop() // SIGTERM
		Eventually(done, 10*time.Second).Should(Receive(BeNil()))
		_, err = http.Get(base + "/healthz")
		Expect(err).To(HaveOccurred(), "the server stopped listening")
	})
})
