package segment

import "time"

// ParseTimestamp reads the ISO-8601 dates real Segment clients send, which are looser than
// RFC 3339: analytics-go's nanosecond local-offset times ("2024-05-01T14:03:07.123456789+02:00"),
// millisecond "Z" times from node and browsers, date-only values, offsets without a colon
// ("+0200", "+02"), a space instead of "T", and single-digit fields such as the
// "2015-2-02T00:30:08.276Z" in Segment's own docs. A time without a zone is UTC.
func ParseTimestamp(s string) (time.Time, bool) {
	p := tsParser{s: s}
	year, ok := p.digits(4, 4)
	if !ok || !p.byte('-') {
		return time.Time{}, false
	}
	month, ok := p.digits(1, 2)
	if !ok || month < 1 || month > 12 || !p.byte('-') {
		return time.Time{}, false
	}
	day, ok := p.digits(1, 2)
	if !ok || day < 1 || day > daysIn(time.Month(month), year) {
		return time.Time{}, false
	}
	if p.done() {
		return time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC), true
	}
	if !p.byte('T') && !p.byte('t') && !p.byte(' ') {
		return time.Time{}, false
	}
	hour, ok := p.digits(1, 2)
	if !ok || hour > 23 || !p.byte(':') {
		return time.Time{}, false
	}
	minute, ok := p.digits(1, 2)
	if !ok || minute > 59 {
		return time.Time{}, false
	}
	second, nanos := 0, 0
	if p.byte(':') {
		if second, ok = p.digits(1, 2); !ok || second > 60 { // 60: a leap second rolls over
			return time.Time{}, false
		}
		if p.byte('.') || p.byte(',') {
			if nanos, ok = p.fraction(); !ok {
				return time.Time{}, false
			}
		}
	}
	offset, ok := p.zone()
	if !ok || !p.done() {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, second, nanos, time.UTC)
	t = t.Add(-time.Duration(offset) * time.Second)
	return t, representable(t)
}

type tsParser struct {
	s string
	i int
}

func (p *tsParser) done() bool { return p.i == len(p.s) }

func (p *tsParser) byte(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// digits reads between min and max decimal digits.
func (p *tsParser) digits(min, max int) (int, bool) {
	n, start := 0, p.i
	for p.i < len(p.s) && p.i-start < max && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		n = n*10 + int(p.s[p.i]-'0')
		p.i++
	}
	return n, p.i-start >= min
}

// fraction reads fractional-second digits; beyond nanoseconds they are ignored.
func (p *tsParser) fraction() (int, bool) {
	n, count := 0, 0
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		if count < 9 {
			n = n*10 + int(p.s[p.i]-'0')
		}
		count++
		p.i++
	}
	for c := count; c < 9; c++ {
		n *= 10
	}
	return n, count > 0
}

// zone reads "", "Z", "±hh", "±hhmm" or "±hh:mm" and returns the offset east of UTC in seconds.
func (p *tsParser) zone() (int, bool) {
	if p.done() || p.byte('Z') || p.byte('z') {
		return 0, true
	}
	sign := 1
	switch {
	case p.byte('+'):
	case p.byte('-'):
		sign = -1
	default:
		return 0, false
	}
	hours, ok := p.digits(2, 2)
	if !ok || hours > 23 {
		return 0, false
	}
	minutes := 0
	if !p.done() {
		p.byte(':')
		if minutes, ok = p.digits(2, 2); !ok || minutes > 59 {
			return 0, false
		}
	}
	return sign * (hours*3600 + minutes*60), true
}

func daysIn(m time.Month, year int) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// appendTimestamp writes t the way the workers read it back: RFC 3339 in UTC with nanoseconds.
func appendTimestamp(buf []byte, t time.Time) []byte {
	buf = append(buf, '"')
	buf = t.UTC().AppendFormat(buf, time.RFC3339Nano)
	return append(buf, '"')
}

// representable reports whether t survives an RFC 3339 round trip (four-digit years only).
func representable(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}
