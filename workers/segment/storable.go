package segment

import "unicode/utf8"

// MaxNestingDepth bounds how deeply a message's objects and arrays may nest. Real Segment
// traffic nests a few levels; a deeper message is refused on its own, so no later stage (the
// workers' decoding, Postgres' jsonb parser) has to walk it.
const MaxNestingDepth = 64

// storable reports why Postgres could not store a message as sent, or "" when it can: the
// bytes must be valid UTF-8, no string may hold a NUL (\u0000) or an unpaired surrogate escape
// (Postgres refuses both in jsonb and text), and nesting stays within MaxNestingDepth. It reads
// JSON that validJSON has accepted, in one pass.
func storable(msg []byte) (code, message string) {
	if !utf8.Valid(msg) {
		return CodeInvalidUTF8, "the message holds bytes that are not valid UTF-8"
	}
	depth := 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '{', '[':
			if depth++; depth > MaxNestingDepth {
				return CodeNestingTooDeep, "objects and arrays may nest at most 64 levels deep"
			}
		case '}', ']':
			depth--
		case '"':
			end, ok := checkString(msg, i)
			if !ok {
				return CodeUnstorableString, `a string holds \u0000 or an unpaired UTF-16 surrogate, which Postgres cannot store`
			}
			i = end
		}
	}
	return "", ""
}

// checkString walks the string token starting at d[i] == '"' and returns the index of its
// closing quote; ok is false when an escape decodes to NUL or to a surrogate without its pair.
func checkString(d []byte, i int) (end int, ok bool) {
	for i++; i < len(d); i++ {
		switch d[i] {
		case '"':
			return i, true
		case '\\':
			i++
			if i >= len(d) || d[i] != 'u' {
				continue
			}
			r, n := hexRune(d, i+1)
			switch {
			case n < 0:
				return i, false
			case r == 0:
				return i, false
			case r >= 0xD800 && r < 0xDC00: // high surrogate: a low one must follow
				if i+10 >= len(d) || d[i+5] != '\\' || d[i+6] != 'u' {
					return i, false
				}
				lo, m := hexRune(d, i+7)
				if m < 0 || lo < 0xDC00 || lo > 0xDFFF {
					return i, false
				}
				i += 10
			case r >= 0xDC00 && r <= 0xDFFF: // a low surrogate alone
				return i, false
			default:
				i += 4
			}
		}
	}
	return i, true
}

// hexRune reads the four hex digits at d[i:]; n is -1 when they are not there.
func hexRune(d []byte, i int) (r rune, n int) {
	if i+4 > len(d) {
		return 0, -1
	}
	for _, c := range d[i : i+4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, -1
		}
		r = r<<4 | rune(v)
	}
	return r, 4
}
