package segment_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

var _ = Describe("ParseTimestamp", func() {
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) time.Time {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC)
	}
	DescribeTable("reads the ISO-8601 forms real clients send",
		func(in string, want time.Time) {
			got, ok := segment.ParseTimestamp(in)
			Expect(ok).To(BeTrue())
			Expect(got.Equal(want)).To(BeTrue(), "got %s", got)
		},
		Entry("node/browser milliseconds Z", "2024-05-01T10:00:00.123Z", utc(2024, 5, 1, 10, 0, 0, 123e6)),
		Entry("analytics-go local offset, nanoseconds", "2024-05-01T12:00:00.123456789+02:00", utc(2024, 5, 1, 10, 0, 0, 123456789)),
		Entry("negative offset", "2024-05-01T05:30:00-04:30", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("offset without colon", "2024-05-01T12:00:00+0200", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("hour-only offset", "2024-05-01T12:00:00+02", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("no seconds", "2024-05-01T10:00Z", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("no zone is UTC", "2024-05-01T10:00:00", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("space separator", "2024-05-01 10:00:00Z", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("date only", "2015-02-02", utc(2015, 2, 2, 0, 0, 0, 0)),
		Entry("single-digit month from Segment's docs", "2015-2-02T00:30:08.276Z", utc(2015, 2, 2, 0, 30, 8, 276e6)),
		Entry("single-digit day and hour", "2015-12-2T3:04:05Z", utc(2015, 12, 2, 3, 4, 5, 0)),
		Entry("more than nine fraction digits", "2024-05-01T10:00:00.1234567891234Z", utc(2024, 5, 1, 10, 0, 0, 123456789)),
		Entry("comma fraction", "2024-05-01T10:00:00,5Z", utc(2024, 5, 1, 10, 0, 0, 5e8)),
		Entry("lower-case t and z", "2024-05-01t10:00:00z", utc(2024, 5, 1, 10, 0, 0, 0)),
		Entry("leap day", "2024-02-29T00:00:00Z", utc(2024, 2, 29, 0, 0, 0, 0)),
	)
	DescribeTable("refuses what is not a date",
		func(in string) {
			_, ok := segment.ParseTimestamp(in)
			Expect(ok).To(BeFalse())
		},
		Entry("empty", ""),
		Entry("words", "yesterday"),
		Entry("epoch seconds", "1714557600"),
		Entry("month 13", "2024-13-01T00:00:00Z"),
		Entry("February 30", "2024-02-30T00:00:00Z"),
		Entry("not a leap year", "2023-02-29"),
		Entry("hour 24", "2024-05-01T24:00:00Z"),
		Entry("minute 60", "2024-05-01T10:60:00Z"),
		Entry("two-digit year", "24-05-01"),
		Entry("trailing junk", "2024-05-01T10:00:00Zjunk"),
		Entry("dangling fraction dot", "2024-05-01T10:00:00.Z"),
		Entry("bad offset", "2024-05-01T10:00:00+2:00"),
		Entry("before year 0 once shifted to UTC", "0000-01-01T00:00:00+01:00"),
	)
})
