package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
)

var _ = Describe("tally worker and tally migrate", func() {
	run := func(ctx context.Context, args ...string) (string, error) {
		var out bytes.Buffer
		var err error
		for _, cmd := range Commands() {
			if cmd.Name() == args[0] {
				cmd.SetArgs(args[1:])
				cmd.SetOut(&out)
				cmd.SetErr(&out)
				err = cmd.ExecuteContext(ctx)
			}
		}
		return out.String(), err
	}

	It("runs a worker from its source settings file and serves metrics and readiness", func(ctx SpecContext) {
		src := newSource(ctx, "accountId")
		file := writeSourceConfig(src)
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())

		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := run(runCtx, "worker", "--nats-url", natsSrv.ClientURL(), "--database-url", databaseURL,
				"--source-config", file, "--metrics-listen", addr, "--max-wait", "50ms")
			done <- err
		}()
		DeferCleanup(func() { cancel(); Eventually(done).WithTimeout(10 * time.Second).Should(Receive(BeNil())) })

		live := track("t1", "u1", "Clicked", 1, map[string]any{"accountId": "acme"}, nil)
		live["receivedAt"] = time.Now().UTC().Format(time.RFC3339Nano) // received now: counts in the end-to-end lag
		publish(ctx, src, live)
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1`, src.Tenant)["account_id"]).To(Equal("acme"))

		get := func(path string) (int, string) {
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				return 0, err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body)
		}
		Eventually(func() int { code, _ := get("/readyz"); return code }).Should(Equal(http.StatusOK))
		_, metrics := get("/metrics")
		Expect(metrics).To(ContainSubstring(`tally_worker_messages_mapped_total{source="` + src.String() + `",type="track"} 1`))
		Expect(metrics).To(ContainSubstring(`tally_worker_batches_total{source="` + src.String() + `"} 1`))
		Expect(metrics).To(ContainSubstring(`tally_worker_batch_duration_seconds_count{source="` + src.String() + `"} 1`))
		Expect(metrics).To(ContainSubstring(`tally_worker_end_to_end_seconds_count{source="` + src.String() + `"} 1`))
		Expect(metrics).To(ContainSubstring(`tally_worker_consumer_pending_messages{source="` + src.String() + `"} 0`))
	})

	It("migrates from the command line, one migration at a time with progress, idempotently", func(ctx SpecContext) {
		url, drop, err := testdb.Fresh(ctx, "migrate_cmd")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(drop)
		out, err := run(ctx, "migrate", "--database-url", url)
		Expect(err).NotTo(HaveOccurred())
		files, err := fs.Glob(migrationFiles, "migrations/*.sql")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(HavePrefix(fmt.Sprintf("%d migration(s) to apply\n", len(files))))
		Expect(out).To(MatchRegexp(`applied 00001_schema\.sql \(1 of %d\) in \d`, len(files)))
		Expect(strings.Count(out, "applied ")).To(Equal(len(files)))

		out, err = run(ctx, "migrate", "--database-url", url)
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(Equal(fmt.Sprintf("the tally schema is up to date (version %d)\n", len(files))))
		_, err = run(ctx, "migrate")
		Expect(err).To(MatchError(ContainSubstring("--database-url")))
	})
})
