package segment

import "bytes"

// maxMergeDepth bounds the recursion of appendMerged; below it the message's value wins whole.
const maxMergeDepth = 8

type rawMember struct {
	key    []byte // raw key token
	value  []byte
	member []byte
}

// appendMerged writes the object over merged onto base: every member of over, with objects present
// on both sides merged recursively, followed by the members only base has. The message's own
// values (over) win; batch-level values (base) fill the gaps.
func appendMerged(b, base, over []byte, depth int) []byte {
	var stack [16]rawMember
	baseMembers := stack[:0]
	it, _ := newObjectIter(base)
	for {
		k, v, m, ok := it.next()
		if !ok {
			break
		}
		baseMembers = append(baseMembers, rawMember{k, v, m})
	}
	var usedStack [16]bool
	var used []bool
	if len(baseMembers) > len(usedStack) {
		used = make([]bool, len(baseMembers))
	} else {
		used = usedStack[:len(baseMembers)]
	}

	b = append(b, '{')
	first := true
	separate := func() {
		if !first {
			b = append(b, ',')
		}
		first = false
	}
	oit, _ := newObjectIter(over)
	for {
		k, v, m, ok := oit.next()
		if !ok {
			break
		}
		separate()
		j := findMember(baseMembers, k)
		if j < 0 {
			b = append(b, m...)
			continue
		}
		used[j] = true
		if depth < maxMergeDepth && isObject(v) && isObject(baseMembers[j].value) {
			b = append(b, k...)
			b = append(b, ':')
			b = appendMerged(b, baseMembers[j].value, v, depth+1)
			continue
		}
		b = append(b, m...)
	}
	for j, m := range baseMembers {
		if !used[j] {
			separate()
			b = append(b, m.member...)
		}
	}
	return append(b, '}')
}

func findMember(members []rawMember, key []byte) int {
	for j := range members {
		if sameKey(members[j].key, key) {
			return j
		}
	}
	return -1
}

// sameKey compares raw key tokens, decoding them only when one holds an escape.
func sameKey(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	if bytes.IndexByte(a, '\\') < 0 && bytes.IndexByte(b, '\\') < 0 {
		return false
	}
	return keyText(a) == keyText(b)
}
