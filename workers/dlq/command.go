// Package dlq is `tally dlq`, the command-line view of a source's dead letters: the messages its
// workers could not map, kept with their reasons until a person re-drives them.
package dlq

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tallyhq/tally/workers/stream"
)

// NewCommand is `tally dlq`: list a source's dead letters and publish them back to its stream.
// It talks only to JetStream, through the stream package's helpers.
func NewCommand() *cobra.Command {
	var natsURL, natsCreds, sourceName string
	cmd := &cobra.Command{Use: "dlq", Short: "Look at and re-drive a source's dead letters",
		Example: `  tally dlq list --nats-url nats://nats:4222 --source acme/acme-web
  tally dlq redrive --nats-url nats://nats:4222 --source acme/acme-web --all`}
	cmd.PersistentFlags().StringVar(&natsURL, "nats-url", nats.DefaultURL, "NATS server URL")
	cmd.PersistentFlags().StringVar(&natsCreds, "nats-creds", "", "NATS credentials file (optional)")
	cmd.PersistentFlags().StringVar(&sourceName, "source", "", "the SegmentSource, namespace/name")
	open := func() (*nats.Conn, jetstream.JetStream, stream.Source, error) {
		ns, name, ok := strings.Cut(sourceName, "/")
		if !ok || ns == "" || name == "" {
			return nil, nil, stream.Source{}, fmt.Errorf("--source must be namespace/name, not %q", sourceName)
		}
		// A command-line tool fails at once when NATS is down instead of waiting for it.
		nc, err := stream.Connect(natsURL, natsCreds, "tally-dlq", slog.Default(), nats.RetryOnFailedConnect(false))
		if err != nil {
			return nil, nil, stream.Source{}, err
		}
		js, err := jetstream.New(nc)
		return nc, js, stream.Source{Namespace: ns, Name: name}, err
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters with their reasons",
		Example: `  # Each dead letter with its sequence, reason and original message
  tally dlq list --nats-url nats://nats:4222 --source acme/acme-web`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nc, js, src, err := open()
			if err != nil {
				return err
			}
			defer nc.Close()
			letters, err := stream.ListDeadLetters(cmd.Context(), js, src)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d dead letter(s) of %s\n", len(letters), src)
			for _, l := range letters {
				fmt.Fprintf(out, "seq=%d time=%s subject=%s original_seq=%s reason=%q\n  %s\n",
					l.Sequence, l.Time.UTC().Format(time.RFC3339), l.OriginalSubject, l.OriginalSequence, l.Reason, l.Data)
			}
			return nil
		},
	}
	var all bool
	var seqs []uint
	redrive := &cobra.Command{
		Use:   "redrive",
		Short: "Publish dead letters back to their original subject and remove them from the dead-letter stream",
		Example: `  # Every dead letter, with progress on stderr (after fixing what refused them)
  tally dlq redrive --nats-url nats://nats:4222 --source acme/acme-web --all

  # Two of them, by sequence (from tally dlq list)
  tally dlq redrive --nats-url nats://nats:4222 --source acme/acme-web --seq 12 --seq 15`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all == (len(seqs) > 0) {
				return errors.New("give either --all or --seq")
			}
			nc, js, src, err := open()
			if err != nil {
				return err
			}
			defer nc.Close()
			var targets []uint64
			if all {
				letters, err := stream.ListDeadLetters(cmd.Context(), js, src)
				if err != nil {
					return err
				}
				for _, l := range letters {
					targets = append(targets, l.Sequence)
				}
			} else {
				for _, s := range seqs {
					targets = append(targets, uint64(s))
				}
			}
			// Progress on stderr at every tenth of the way, the outcome on stdout.
			step := max(len(targets)/10, 1)
			for i, seq := range targets {
				if err := stream.Redrive(cmd.Context(), js, src, seq); err != nil {
					return fmt.Errorf("after re-driving %d of %d: %w", i, len(targets), err)
				}
				if done := i + 1; done%step == 0 && done < len(targets) {
					fmt.Fprintf(cmd.ErrOrStderr(), "re-driving: %d of %d (%d%%)\n", done, len(targets), 100*done/len(targets))
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "re-driven %d of %d dead letter(s) of %s\n", len(targets), len(targets), src)
			return nil
		},
	}
	redrive.Flags().BoolVar(&all, "all", false, "re-drive every dead letter")
	redrive.Flags().UintSliceVar(&seqs, "seq", nil, "dead-letter sequence(s) to re-drive")
	cmd.AddCommand(list, redrive)
	return cmd
}
