// Package catalog is `tally catalog`: the event names a tenant received, for the team deciding
// which to ignore (Segment's "Events > Status" page), with a reviewable SegmentSource patch.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/tallyhq/tally/workers/worker"
)

// NewCommand is `tally catalog`.
func NewCommand() *cobra.Command {
	var databaseURL, tenant, output, sourceName string
	var suggest bool
	var minShare float64
	var top int
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Print the event names a tenant received, and suggest which to ignore",
		Example: `  # The catalog of tenant acme, busiest first
  tally catalog --database-url postgres://tally@db:5432/tally --tenant acme

  # As JSON, for a script
  tally catalog --tenant acme --output json

  # A patch adding the noisiest events to ignoredEvents, to review and commit in Git
  tally catalog --tenant acme --suggest-ignore --source acme/acme-web > ignore-patch.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if databaseURL == "" || tenant == "" {
				return errors.New("--database-url (or TALLY_DATABASE_URL) and --tenant are required")
			}
			pool, err := pgxpool.New(cmd.Context(), databaseURL)
			if err != nil {
				return errors.New("--database-url does not parse") // never the URL: it holds a password
			}
			defer pool.Close()
			entries, err := worker.Catalog(cmd.Context(), pool, tenant)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if suggest {
				namespace, name, ok := strings.Cut(sourceName, "/")
				if !ok || namespace == "" || name == "" {
					return fmt.Errorf("--suggest-ignore needs --source namespace/name, not %q", sourceName)
				}
				return writePatch(out, namespace, name, entries, suggestIgnore(entries, minShare, top))
			}
			switch output {
			case "table":
				return writeTable(out, entries)
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(nonNil(entries))
			case "yaml":
				data, err := yaml.Marshal(nonNil(entries))
				if err != nil {
					return err
				}
				_, err = out.Write(data)
				return err
			}
			return fmt.Errorf("--output must be table, json or yaml, not %q", output)
		},
	}
	f := cmd.Flags()
	f.StringVar(&databaseURL, "database-url", "", "Postgres URL (or TALLY_DATABASE_URL); a tenant's own login sees its tenant only")
	f.StringVar(&tenant, "tenant", "", "the tenant whose catalog to print")
	f.StringVarP(&output, "output", "o", "table", "table, json or yaml")
	f.BoolVar(&suggest, "suggest-ignore", false, "print a SegmentSource patch adding the noisiest events to spec.ignoredEvents")
	f.StringVar(&sourceName, "source", "", "the SegmentSource the patch is for, namespace/name (with --suggest-ignore)")
	f.Float64Var(&minShare, "min-share", 0.1, "with --suggest-ignore: the least share of the tenant's events an event must have")
	f.IntVar(&top, "top", 3, "with --suggest-ignore: the most events suggested")
	return cmd
}

func nonNil(entries []worker.CatalogEntry) []worker.CatalogEntry {
	if entries == nil {
		return []worker.CatalogEntry{}
	}
	return entries
}

func writeTable(out io.Writer, entries []worker.CatalogEntry) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "EVENT\tFIRST SEEN\tLAST SEEN\tCOUNT\tIGNORED")
	for _, e := range entries {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%t\n", e.Event, when(e.FirstSeenAt), when(e.LastSeenAt), e.Count, e.Ignored)
	}
	return w.Flush()
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// suggestion is an event worth ignoring and the share of the tenant's events it is.
type suggestion struct {
	event string
	share float64
}

// suggestIgnore picks the noisiest events not ignored yet: at least minShare of all the tenant's
// stored events, at most top of them, busiest first. Tally does not see who queries which event,
// so volume is the signal: the patch is for a person to review.
func suggestIgnore(entries []worker.CatalogEntry, minShare float64, top int) []suggestion {
	var total int64
	for _, e := range entries {
		total += e.Count
	}
	var out []suggestion
	for _, e := range entries { // busiest first
		if len(out) == top || total == 0 {
			break
		}
		share := float64(e.Count) / float64(total)
		if !e.Ignored && share >= minShare {
			out = append(out, suggestion{e.Event, share})
		}
	}
	return out
}

// writePatch prints a merge patch of the SegmentSource whose ignoredEvents are those already
// ignored plus the suggestions (a merge patch replaces a list, so it carries the whole list).
func writePatch(out io.Writer, namespace, name string, entries []worker.CatalogEntry, suggested []suggestion) error {
	var b strings.Builder
	b.WriteString("# Suggested by `tally catalog --suggest-ignore`: review, then commit to the SegmentSource in Git,\n")
	b.WriteString("# or apply with: kubectl patch segmentsource " + name + " -n " + namespace + " --type merge --patch-file <this file>\n")
	if len(suggested) == 0 {
		b.WriteString("# No event is noisy enough to suggest: nothing to change.\n")
	}
	b.WriteString("apiVersion: tally.dev/v1alpha1\nkind: SegmentSource\nmetadata:\n")
	fmt.Fprintf(&b, "  name: %s\n  namespace: %s\nspec:\n  ignoredEvents:", quote(name), quote(namespace))
	var lines []string
	for _, e := range entries {
		if e.Ignored {
			lines = append(lines, fmt.Sprintf("  - %s # already ignored", quote(e.Event)))
		}
	}
	for _, s := range suggested {
		lines = append(lines, fmt.Sprintf("  - %s # %.0f%% of the tenant's events", quote(s.event), 100*s.share))
	}
	if len(lines) == 0 {
		b.WriteString(" []\n")
	} else {
		b.WriteString("\n" + strings.Join(lines, "\n") + "\n")
	}
	_, err := io.WriteString(out, b.String())
	return err
}

// quote is a YAML scalar for any string: a JSON string is one.
func quote(s string) string {
	data, _ := json.Marshal(s)
	return string(data)
}
