package stream

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// A source's messages may be split by user into partitions, so several workers apply one tenant's
// messages at once. The user is the message's userId, else its anonymousId; a hash of it picks
// one of Slots lock slots, and the slot picks the partition. Partition counts divide Slots, so a
// user's slot says its partition under every count, and the workers' locks (one per slot, see
// package worker) never depend on the count a receiver or worker happened to load.
const (
	// Slots is the number of lock slots per tenant and the most partitions a source may have.
	Slots = 64
	// partitionSeparator separates a message subject's type from its partition.
	partitionSeparator = "."
)

// Slot is the lock slot of an identity (a userId, anonymousId or previousId): FNV-1a, modulo
// Slots. The same function runs in the receiver (routing) and in the workers (locking).
func Slot(identity string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(identity))
	return int(h.Sum32() % Slots)
}

// UserKey is what partitions a message: its userId, else its anonymousId.
func UserKey(userID, anonymousID string) string {
	if userID != "" {
		return userID
	}
	return anonymousID
}

// Partition is the partition of a message whose user is identity, out of n.
func Partition(identity string, n int) int {
	if n <= 1 {
		return 0
	}
	return Slot(identity) % n
}

// ValidPartitions reports whether n is a partition count: a power of two, at most Slots.
func ValidPartitions(n int) bool { return n >= 1 && n <= Slots && n&(n-1) == 0 }

// PartitionSubject is where a message of the given type goes when the source has n partitions:
// the unpartitioned subject for n <= 1 (the layout of earlier versions), else the type's subject
// with the partition appended.
func (s Source) PartitionSubject(messageType string, partition, n int) string {
	if n <= 1 {
		return s.Subject(messageType)
	}
	return s.Subject(messageType) + partitionSeparator + strconv.Itoa(partition)
}

// PartitionConsumer is the durable consumer of one partition.
func PartitionConsumer(partition int) string { return WorkerConsumer + "-" + strconv.Itoa(partition) }

// partitionFilter matches every message subject of one partition.
func (s Source) partitionFilter(partition int) string {
	return s.subjectPrefix() + ".msg.*" + partitionSeparator + strconv.Itoa(partition)
}

// Consumers are the durable consumers the source's workers consume when partitions consumers
// exist: the unpartitioned one (WorkerConsumer, which holds what was published before the source
// was partitioned) and one per partition.
func Consumers(partitions int) []string {
	names := []string{WorkerConsumer}
	if partitions > 1 {
		for p := range partitions {
			names = append(names, PartitionConsumer(p))
		}
	}
	return names
}

// consumerPartition is the partition a consumer name stands for, -1 for the unpartitioned one and
// for names that are no worker consumer.
func consumerPartition(name string) int {
	rest, ok := strings.CutPrefix(name, WorkerConsumer+"-")
	if !ok {
		return -1
	}
	p, err := strconv.Atoi(rest)
	if err != nil || p < 0 || p >= Slots || strconv.Itoa(p) != rest {
		return -1
	}
	return p
}
