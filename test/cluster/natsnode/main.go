// Command natsnode is one node of the cluster test's NATS cluster, in a process of its own so the
// test can kill it as a machine dies (SIGKILL: no leader hand-over, no goodbye to its peers),
// which an in-process Shutdown does not do.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tallyhq/tally/workers/natsserver"
)

func main() {
	var o natsserver.Options
	c := &natsserver.Cluster{Name: "tally"}
	var routes string
	flag.StringVar(&o.Name, "name", "", "server name, unique in the cluster")
	flag.IntVar(&o.Port, "port", 0, "client port")
	flag.StringVar(&o.StoreDir, "store", "", "JetStream store directory")
	flag.IntVar(&c.Port, "cluster-port", 0, "route port")
	flag.StringVar(&routes, "routes", "", "comma-separated nats-route:// URLs of every node")
	flag.Parse()
	c.Routes = strings.Split(routes, ",")
	o.Cluster = c
	ns, err := natsserver.Start(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
	ns.Shutdown()
}
