// Command tally is Tally's one binary: the operator, the receiver, the workers and the local mode.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/workers/catalog"
	"github.com/tallyhq/tally/workers/dlq"
	"github.com/tallyhq/tally/workers/local"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/worker"
)

// version is stamped by the build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

// newRootCommand is tally with every subcommand.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "tally",
		Short:         "Segment-compatible ingestion of accounts, users and product events into Postgres",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Every flag may also come from TALLY_<FLAG> (dashes as underscores), for pods and containers.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return flagsFromEnv(cmd.Flags()) },
	}
	root.AddCommand(worker.Commands()...)
	root.AddCommand(dlq.NewCommand())
	root.AddCommand(catalog.NewCommand())
	root.AddCommand(receiver.NewCommand())
	root.AddCommand(local.NewCommand())
	root.AddCommand(manager.NewCommand())
	return root
}

// flagsFromEnv sets every flag not given on the command line from its TALLY_* variable.
func flagsFromEnv(flags *pflag.FlagSet) error {
	var err error
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil {
			return
		}
		name := "TALLY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if e := flags.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", name, e)
			}
		}
	})
	return err
}
