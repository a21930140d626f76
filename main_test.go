package main

import (
	"os"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/local"
)

func TestTally(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Main Suite")
}

// setenv sets a variable until the spec ends.
func setenv(name, value string) {
	old, had := os.LookupEnv(name)
	Expect(os.Setenv(name, value)).To(Succeed())
	DeferCleanup(func() {
		if had {
			_ = os.Setenv(name, old)
		} else {
			_ = os.Unsetenv(name)
		}
	})
}

var _ = Describe("flagsFromEnv", func() {
	It("sets `tally local`'s flags from TALLY_* variables, dashes as underscores", func() {
		setenv("TALLY_LISTEN", "0.0.0.0:9090")
		setenv("TALLY_DATABASE_URL", "postgres://u@db:5432/x?sslmode=disable")
		setenv("TALLY_MAX_WAIT", "2s")
		setenv("TALLY_SYNC_ALWAYS", "true")
		setenv("TALLY_BATCH_SIZE", "42")
		cmd := local.NewCommand()
		Expect(cmd.ParseFlags(nil)).To(Succeed())
		Expect(flagsFromEnv(cmd.Flags())).To(Succeed())

		f := cmd.Flags()
		Expect(f.Lookup("listen").Value.String()).To(Equal("0.0.0.0:9090"))
		Expect(f.Lookup("database-url").Value.String()).To(Equal("postgres://u@db:5432/x?sslmode=disable"))
		Expect(f.GetDuration("max-wait")).To(Equal(2 * time.Second))
		Expect(f.GetBool("sync-always")).To(BeTrue())
		Expect(f.GetInt("batch-size")).To(Equal(42))
		// Flags without a variable keep their defaults.
		Expect(f.Lookup("manifests").Value.String()).To(Equal("config/samples"))
	})

	It("lets a flag given on the command line win over its variable", func() {
		setenv("TALLY_LISTEN", "0.0.0.0:9090")
		setenv("TALLY_BATCH_SIZE", "42")
		cmd := local.NewCommand()
		Expect(cmd.ParseFlags([]string{"--listen", "127.0.0.1:7070"})).To(Succeed())
		Expect(flagsFromEnv(cmd.Flags())).To(Succeed())
		Expect(cmd.Flags().Lookup("listen").Value.String()).To(Equal("127.0.0.1:7070"))
		Expect(cmd.Flags().GetInt("batch-size")).To(Equal(42))
	})

	It("names the variable holding a bad value", func() {
		setenv("TALLY_BATCH_SIZE", "lots")
		cmd := local.NewCommand()
		Expect(cmd.ParseFlags(nil)).To(Succeed())
		err := flagsFromEnv(cmd.Flags())
		Expect(err).To(MatchError(ContainSubstring("TALLY_BATCH_SIZE")))
		Expect(err).To(MatchError(ContainSubstring("lots")))

		setenv("TALLY_BATCH_SIZE", "7")
		setenv("TALLY_MAX_WAIT", "soon")
		cmd = local.NewCommand()
		Expect(cmd.ParseFlags(nil)).To(Succeed())
		Expect(flagsFromEnv(cmd.Flags())).To(MatchError(ContainSubstring("TALLY_MAX_WAIT")))
	})
})
