package segment

// maxNestingDepth matches encoding/json's limit, so validJSON and json.Valid agree everywhere.
const maxNestingDepth = 10000

// validJSON reports whether d is exactly one well-formed JSON value, optionally surrounded by
// whitespace: json.Valid's contract (FuzzValidJSON checks that the two agree), at a fraction of
// its cost, because every request body goes through it. Like json.Valid it does not check that
// strings are valid UTF-8; decoders replace invalid bytes.
func validJSON(d []byte) bool {
	var stackBuf [64]byte
	stack := stackBuf[:0] // open containers: '{' or '['
	i := skipSpace(d, 0)
	for {
		// A value starts at i.
		if i >= len(d) {
			return false
		}
		switch d[i] {
		case '{', '[':
			if len(stack) == maxNestingDepth {
				return false
			}
			open := d[i]
			stack = append(stack, open)
			i = skipSpace(d, i+1)
			if i < len(d) && d[i] == open+2 { // '}' is '{'+2, ']' is '['+2
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if open == '{' {
				if i = scanKey(d, i); i < 0 {
					return false
				}
			}
			continue
		case '"':
			i = scanString(d, i)
		case 't':
			i = scanLiteral(d, i, "true")
		case 'f':
			i = scanLiteral(d, i, "false")
		case 'n':
			i = scanLiteral(d, i, "null")
		default:
			i = scanNumber(d, i)
		}
		if i < 0 {
			return false
		}
		// After a value: close containers, or move to the next element.
		for {
			i = skipSpace(d, i)
			if len(stack) == 0 {
				return i == len(d)
			}
			if i >= len(d) {
				return false
			}
			top := stack[len(stack)-1]
			if d[i] == top+2 {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			if d[i] != ',' {
				return false
			}
			i = skipSpace(d, i+1)
			if top == '{' {
				if i = scanKey(d, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

// scanKey reads `"key" :` and the whitespace after it, returning where the value starts.
func scanKey(d []byte, i int) int {
	if i >= len(d) || d[i] != '"' {
		return -1
	}
	if i = scanString(d, i); i < 0 {
		return -1
	}
	if i = skipSpace(d, i); i >= len(d) || d[i] != ':' {
		return -1
	}
	return skipSpace(d, i+1)
}

// scanString checks the string starting at d[i] == '"' and returns the index after it.
func scanString(d []byte, i int) int {
	for i++; i < len(d); i++ {
		switch c := d[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(d) {
				return -1
			}
			switch d[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(d) {
					return -1
				}
				for _, h := range d[i+1 : i+5] {
					if !isHex(h) {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func scanLiteral(d []byte, i int, lit string) int {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// scanNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? and returns the index after it.
func scanNumber(d []byte, i int) int {
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		i = scanDigits(d, i)
	default:
		return -1
	}
	if i < len(d) && d[i] == '.' {
		if i = scanDigits(d, i+1); i < 0 {
			return -1
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i = scanDigits(d, i); i < 0 {
			return -1
		}
	}
	return i
}

// scanDigits reads one or more digits.
func scanDigits(d []byte, i int) int {
	start := i
	for i < len(d) && d[i] >= '0' && d[i] <= '9' {
		i++
	}
	if i == start {
		return -1
	}
	return i
}
