package stream

import "testing"

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://nats:4222": "nats://nats:4222",
		"nats://tally:s3cret@nats-0:4222,nats://tally:s3cret@nats-1:4222": "nats://tally:xxxxx@nats-0:4222,nats://tally:xxxxx@nats-1:4222",
		"nats://t0ken@nats:4222":          "nats://xxxxx@nats:4222",
		"tls://a:b@x:4222, nats://y:4222": "tls://a:xxxxx@x:4222,nats://y:4222",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
