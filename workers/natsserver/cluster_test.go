package natsserver

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The bench's --nats-nodes 3 runs on StartCluster: its nodes must form one JetStream cluster that
// places a three-replica stream on all of them and serves it from any node.
func TestStartClusterReplicatesAStreamOverEveryNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, err := StartCluster(3, t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, ns := range nodes {
			ns.Shutdown()
		}
	}()
	js := connect(t, nodes[0].ClientURL())
	var s jetstream.Stream
	for s == nil { // the cluster answers once it has elected its meta leader
		attempt, done := context.WithTimeout(ctx, 5*time.Second)
		s, err = js.CreateStream(attempt, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
		done()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("no three-replica stream: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if _, err := js.Publish(ctx, "r3.a", []byte("stored three times")); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream not led and replicated on three nodes: %+v", info.Cluster)
	}
	other, err := connect(t, nodes[2].ClientURL()).Stream(ctx, "R3")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := other.GetMsg(ctx, 1)
	if err != nil || string(msg.Data) != "stored three times" {
		t.Fatalf("read through the third node: %v, %v", msg, err)
	}
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
