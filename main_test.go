package main

import (
	"testing"

	"github.com/spf13/cobra"
)

// Every subcommand's --help shows an example: users reach for one before reading the flags.
func TestEverySubcommandHasAnExample(t *testing.T) {
	var walk func(*cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			seen++
			if sub.Example == "" {
				t.Errorf("tally %s --help has no example", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(newRootCommand())
	if seen < 9 {
		t.Fatalf("found %d subcommands, expected worker, migrate, dlq (list, redrive), catalog, receiver, local, manager", seen)
	}
}
