package main

import (
	"bytes"
	"fmt"
)

// requestToken stands where each request's unique part of a messageId goes, so the load loop can
// reuse pre-generated bodies (generation would otherwise compete with the receiver for the two
// cores) while every message stays unique and JetStream's de-duplication never flatters a figure.
const requestToken = "RQ0000000"

// template is a pre-generated request body with the token in every messageId.
type template struct {
	path   string
	body   []byte
	tracks []string // messageIds of track calls, token included
}

func batchTemplates(seed uint64, n, size int) []template {
	g := newGenerator(seed, requestToken)
	out := make([]template, n)
	for i := range out {
		body, tracks := g.batchBody(size)
		out[i] = template{path: "/v1/batch", body: body, tracks: tracks}
	}
	return out
}

func singleTemplates(seed uint64, n int) []template {
	g := newGenerator(seed, requestToken)
	out := make([]template, n)
	for i := range out {
		typ, body := g.single()
		out[i] = template{path: "/v1/" + typ, body: body}
	}
	return out
}

// instantiate makes request number n of a template.
func (t template) instantiate(n int64) (body []byte, tracks []string) {
	unique := []byte(fmt.Sprintf("r%08d", n%1e8))
	body = bytes.ReplaceAll(t.body, []byte(requestToken), unique)
	for _, id := range t.tracks {
		tracks = append(tracks, string(bytes.Replace([]byte(id), []byte(requestToken), unique, 1)))
	}
	return body, tracks
}
