// Package dlq is `tally dlq`, the command-line view of a source's dead letters: the messages its
// workers could not map, kept with their reasons until a person re-drives them.
package dlq

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
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
	cmd := &cobra.Command{Use: "dlq", Short: "Look at and re-drive a source's dead letters"}
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
			for _, seq := range targets {
				if err := stream.Redrive(cmd.Context(), js, src, seq); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "re-driven", strconv.FormatUint(seq, 10))
			}
			return nil
		},
	}
	redrive.Flags().BoolVar(&all, "all", false, "re-drive every dead letter")
	redrive.Flags().UintSliceVar(&seqs, "seq", nil, "dead-letter sequence(s) to re-drive")
	cmd.AddCommand(list, redrive)
	return cmd
}
