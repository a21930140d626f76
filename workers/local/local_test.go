package local

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

const (
	acmeKey1   = "acme-key-one-0123456789"
	acmeKey2   = "acme-key-two-9876543210"
	globexKey  = "globex-key-abcdef012345"
	pausedKey  = "paused-key-000000000000"
	unknownKey = "nobody-has-this-key-0000"
)

// manifests is the directory a user would point tally local at: acme (two keys, a rotation in
// progress) and globex in another namespace and tenant, and a suspended source.
func manifests() string {
	return writeManifests(map[string]string{
		"acme.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: acme-segment
  namespace: default
type: Opaque
stringData:
  writeKey: |
    ` + acmeKey1 + `
    ` + acmeKey2 + `
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: acme-web
  namespace: default
spec:
  tenant: acme
  writeKeySecretRef:
    name: acme-segment
    key: writeKey
  ignoredEvents: ["Heartbeat"]
`,
		"globex.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: globex-segment
  namespace: globex
data:
  writeKey: ` + base64.StdEncoding.EncodeToString([]byte(globexKey+"\n")) + `
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: globex-app
  namespace: globex
spec:
  tenant: globex
  writeKeySecretRef:
    name: globex-segment
`,
		"paused.yaml": `apiVersion: v1
kind: Secret
metadata:
  name: paused-segment
  namespace: default
stringData:
  writeKey: ` + pausedKey + `
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: paused-web
  namespace: default
spec:
  tenant: paused
  suspend: true
  writeKeySecretRef:
    name: paused-segment
`,
		"kustomization.yaml": "resources: [acme.yaml, globex.yaml, paused.yaml]\n",
	})
}

// batch is the README's first batch with ids of its own: the same user and account ids in every
// tenant, so isolation shows.
func batch(prefix, accountName, email, event string) string {
	return fmt.Sprintf(`{"batch": [
    {"type": "group",    "messageId": "%[1]s-g", "userId": "u1", "groupId": "acc-1", "traits": {"name": %[2]q, "plan": "pro"}},
    {"type": "identify", "messageId": "%[1]s-i", "userId": "u1", "traits": {"email": %[3]q, "company": {"id": "acc-1"}}},
    {"type": "track",    "messageId": "%[1]s-t", "userId": "u1", "event": %[4]q, "properties": {"format": "csv"}}
  ]}`, prefix, accountName, email, event)
}

var _ = Describe("Run", func() {
	It("serves every active source by write key and writes each into its own tenant", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_run")
		// A password in the URL must not reach the terminal. Trust auth ignores it.
		u, err := url.Parse(dbURL)
		Expect(err).NotTo(HaveOccurred())
		password, hasPassword := u.User.Password()
		if !hasPassword {
			password = "banner-must-hide-this"
			u.User = url.UserPassword(u.User.Username(), password)
		}
		r := start(Options{Manifests: manifests(), DataDir: GinkgoT().TempDir(), DatabaseURL: u.String()})

		By("the banner names the real address, each active source with its keys, and no password")
		banner := string(r.banner.Contents())
		host, port, err := net.SplitHostPort(r.addr)
		Expect(err).NotTo(HaveOccurred())
		Expect(host).To(Equal("127.0.0.1"))
		Expect(port).NotTo(Equal("0"))
		Expect(banner).To(ContainSubstring("source default/acme-web (tenant acme)"))
		Expect(banner).To(ContainSubstring("source globex/globex-app (tenant globex)"))
		Expect(banner).To(ContainSubstring("write key: " + acmeKey1))
		Expect(banner).To(ContainSubstring("write key: " + acmeKey2))
		Expect(banner).To(ContainSubstring("write key: " + globexKey))
		Expect(banner).NotTo(ContainSubstring("paused"))
		Expect(banner).NotTo(ContainSubstring(password))
		Expect(banner).To(ContainSubstring("http://" + r.addr + "/v1/track"))

		By("each key of each source is accepted")
		code, body := r.post("/v1/batch", acmeKey1, batch("acme-1", "Acme Corp", "ada@acme.test", "Report Exported"))
		Expect(code).To(Equal(http.StatusOK), body)
		Expect(body).To(MatchJSON(`{"success":true}`))
		code, body = r.post("/v1/track", acmeKey2, `{"messageId":"acme-2-t","userId":"u2","event":"Signed In"}`)
		Expect(code).To(Equal(http.StatusOK), body)
		code, body = r.post("/v1/batch", globexKey, batch("globex-1", "Globex Inc", "hank@globex.test", "Plan Upgraded"))
		Expect(code).To(Equal(http.StatusOK), body)

		By("the suspended source's key and an unknown key are refused")
		code, _ = r.post("/v1/batch", pausedKey, batch("paused-1", "Paused", "p@paused.test", "Nope"))
		Expect(code).To(Equal(http.StatusUnauthorized))
		code, _ = r.post("/v1/track", unknownKey, `{"userId":"u1","event":"Nope"}`)
		Expect(code).To(Equal(http.StatusUnauthorized))

		By("the rows land under the right tenant")
		Eventually(func(g Gomega) {
			events := query(ctx, dbURL, `select tenant, message_id, event, user_id from tally.events order by tenant, message_id`)
			g.Expect(events).To(Equal([]map[string]any{
				{"tenant": "acme", "message_id": "acme-1-t", "event": "Report Exported", "user_id": "u1"},
				{"tenant": "acme", "message_id": "acme-2-t", "event": "Signed In", "user_id": "u2"},
				{"tenant": "globex", "message_id": "globex-1-t", "event": "Plan Upgraded", "user_id": "u1"},
			}))
			g.Expect(query(ctx, dbURL, `select tenant, account_id, name, traits->>'plan' as plan from tally.accounts order by tenant`)).To(Equal([]map[string]any{
				{"tenant": "acme", "account_id": "acc-1", "name": "Acme Corp", "plan": "pro"},
				{"tenant": "globex", "account_id": "acc-1", "name": "Globex Inc", "plan": "pro"},
			}))
			g.Expect(query(ctx, dbURL, `select tenant, user_id, traits->>'email' as email from tally.users where traits ? 'email' order by tenant`)).To(Equal([]map[string]any{
				{"tenant": "acme", "user_id": "u1", "email": "ada@acme.test"},
				{"tenant": "globex", "user_id": "u1", "email": "hank@globex.test"},
			}))
			g.Expect(query(ctx, dbURL, `select tenant, account_id, user_id, linked from tally.account_users order by tenant`)).To(Equal([]map[string]any{
				{"tenant": "acme", "account_id": "acc-1", "user_id": "u1", "linked": true},
				{"tenant": "globex", "account_id": "acc-1", "user_id": "u1", "linked": true},
			}))
		}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())

		By("the track event is linked to the account of its tenant")
		Expect(query(ctx, dbURL, `select tenant, account_id from tally.events where user_id = 'u1' order by tenant`)).To(Equal([]map[string]any{
			{"tenant": "acme", "account_id": "acc-1"},
			{"tenant": "globex", "account_id": "acc-1"},
		}))
		Expect(query(ctx, dbURL, `select count(*) as n from tally.events where tenant = 'paused' or event = 'Nope'`)).To(Equal([]map[string]any{{"n": int64(0)}}))

		By("each tenant's workers write with the tenant's own Postgres login, as in a cluster")
		Expect(query(ctx, dbURL, `select r.tenant, count(a.pid) > 0 as connected from tally.tenant_roles r
			left join pg_stat_activity a on a.usename = r.role_name and a.datname = current_database()
			group by r.tenant order by r.tenant`)).To(Equal([]map[string]any{
			{"tenant": "acme", "connected": true},
			{"tenant": "globex", "connected": true},
		}))
	})

	It("shuts down cleanly on cancel and keeps a request accepted just before it", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_restart")
		dir, data := manifests(), GinkgoT().TempDir()
		// A long batch wait: the worker holds the fetched messages, not yet committed, when the
		// cancel comes.
		r := start(Options{Manifests: dir, DataDir: data, DatabaseURL: dbURL, MaxWait: 5 * time.Second, BatchSize: 1000})
		js := r.jetStream()
		consumer, err := js.Consumer(ctx, stream.Source{Namespace: "default", Name: "acme-web"}.StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())

		code, body := r.post("/v1/batch", acmeKey1, batch("late", "Acme Corp", "ada@acme.test", "Last Call"))
		Expect(code).To(Equal(http.StatusOK), body)
		Eventually(func(g Gomega) {
			info, err := consumer.Info(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.NumAckPending).To(Equal(3), "the worker has the three messages in hand")
		}).WithContext(ctx).Should(Succeed())
		Expect(r.stop()).To(Succeed())

		By("the receiver's port is closed")
		_, err = net.DialTimeout("tcp", r.addr, time.Second)
		Expect(err).To(HaveOccurred())

		By("after a restart on the same data dir the accepted messages are in Postgres, once")
		again := start(Options{Manifests: dir, DataDir: data, DatabaseURL: dbURL})
		// The worker hands its uncommitted batch back on shutdown and local waits for that to reach
		// the server, so the messages come back at once, long before the consumer's ack wait.
		Eventually(func(g Gomega) {
			g.Expect(query(ctx, dbURL, `select tenant, message_id from tally.events`)).To(Equal([]map[string]any{
				{"tenant": "acme", "message_id": "late-t"},
			}))
			g.Expect(query(ctx, dbURL, `select tenant, name from tally.accounts`)).To(Equal([]map[string]any{
				{"tenant": "acme", "name": "Acme Corp"},
			}))
		}).WithContext(ctx).WithTimeout(stream.DefaultAckWait / 3).WithPolling(100 * time.Millisecond).Should(Succeed())

		By("the restarted receiver serves the same keys")
		code, _ = again.post("/v1/track", globexKey, `{"messageId":"after-restart","userId":"u9","event":"Back"}`)
		Expect(code).To(Equal(http.StatusOK))
		Eventually(func() []map[string]any {
			return query(ctx, dbURL, `select tenant from tally.events where message_id = 'after-restart'`)
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Equal([]map[string]any{{"tenant": "globex"}}))
		Expect(again.stop()).To(Succeed())
	})

	It("refuses a manifests directory without a SegmentSource before starting anything", func(ctx SpecContext) {
		err := Run(ctx, Options{Manifests: GinkgoT().TempDir(), Listen: "127.0.0.1:0", DataDir: GinkgoT().TempDir(),
			DatabaseURL: "postgres://postgres@127.0.0.1:1/none?sslmode=disable", Logger: testenv.QuietLogger(), Out: gbytes.NewBuffer()})
		Expect(err).To(MatchError(ContainSubstring("no SegmentSource found")))
	})
})

var _ = Describe("EnsureDatabase", func() {
	It("creates a missing database and leaves an existing one alone", func(ctx SpecContext) {
		u, err := url.Parse(testdb.AdminURL())
		Expect(err).NotTo(HaveOccurred())
		name := fmt.Sprintf("tally_local_ensure_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
		u.Path = "/" + name
		dbURL := u.String()
		DeferCleanup(func(ctx context.Context) {
			admin, err := pgx.Connect(ctx, testdb.AdminURL())
			Expect(err).NotTo(HaveOccurred())
			defer admin.Close(ctx)
			_, err = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			Expect(err).NotTo(HaveOccurred())
		})

		_, err = pgx.Connect(ctx, dbURL)
		Expect(err).To(HaveOccurred(), "the database must not exist yet")

		Expect(EnsureDatabase(ctx, dbURL)).To(Succeed())
		conn, err := pgx.Connect(ctx, dbURL)
		Expect(err).NotTo(HaveOccurred())
		_, err = conn.Exec(ctx, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
		Expect(err).NotTo(HaveOccurred())
		Expect(conn.Close(ctx)).To(Succeed())

		Expect(EnsureDatabase(ctx, dbURL)).To(Succeed())
		Expect(query(ctx, dbURL, "select id from kept")).To(Equal([]map[string]any{{"id": int32(42)}}))
	})

	It("reports a bad URL and an unreachable server", func(ctx SpecContext) {
		Expect(EnsureDatabase(ctx, "postgres://[::1")).To(MatchError(ContainSubstring("database url")))
		err := EnsureDatabase(ctx, "postgres://postgres@127.0.0.1:1/tally?sslmode=disable&connect_timeout=5")
		Expect(err).To(MatchError(ContainSubstring("connect to Postgres")))
	})
})

var _ = Describe("NewCommand", func() {
	It("defaults to the README's setup", func() {
		f := NewCommand().Flags()
		for flag, want := range map[string]string{
			"manifests": "config/samples", "listen": "127.0.0.1:8080", "data-dir": ".tally/nats",
			"nats-port": "-1", "sync-always": "false", "database-url": DefaultDatabaseURL,
			"batch-size": strconv.Itoa(source.DefaultBatchSize), "max-wait": source.DefaultMaxWait.String(),
		} {
			Expect(f.Lookup(flag)).NotTo(BeNil(), flag)
			Expect(f.Lookup(flag).DefValue).To(Equal(want), flag)
		}
		Expect(DefaultDatabaseURL).To(ContainSubstring("127.0.0.1:5432/tally"))
	})

	It("takes no arguments", func() {
		cmd := NewCommand()
		Expect(cmd.Args(cmd, []string{"extra"})).To(HaveOccurred())
		Expect(cmd.Args(cmd, nil)).To(Succeed())
	})

	It("runs the pipeline from its flags and prints the banner on the command's output", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_cmd")
		cmd := NewCommand()
		out := gbytes.NewBuffer()
		cmd.SetOut(out)
		cmd.SetErr(GinkgoWriter)
		cmd.SetArgs([]string{"--manifests", manifests(), "--listen", "127.0.0.1:0", "--data-dir", GinkgoT().TempDir(),
			"--database-url", dbURL, "--max-wait", "20ms"})
		cmdCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			defer GinkgoRecover()
			done <- cmd.ExecuteContext(cmdCtx)
		}()
		DeferCleanup(func() { cancel(); Eventually(done).WithTimeout(60 * time.Second).Should(Receive()) })
		var addr string
		Eventually(func(g Gomega) {
			m := receiverLine.FindStringSubmatch(string(out.Contents()))
			g.Expect(m).To(HaveLen(2))
			addr = m[1]
		}).WithTimeout(60 * time.Second).Should(Succeed())
		r := &running{addr: addr}
		code, _ := r.post("/v1/track", acmeKey2, `{"messageId":"cmd-1","userId":"u1","event":"From The Command"}`)
		Expect(code).To(Equal(http.StatusOK))
		Eventually(func() []map[string]any {
			return query(ctx, dbURL, `select tenant, event from tally.events`)
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Equal([]map[string]any{{"tenant": "acme", "event": "From The Command"}}))
		cancel()
		var err error
		Eventually(done).WithTimeout(60 * time.Second).Should(Receive(&err))
		Expect(err).NotTo(HaveOccurred())
		done <- nil
		Expect(strings.Count(string(out.Contents()), "write key:")).To(Equal(3))
	})
})
