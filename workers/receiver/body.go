package receiver

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/tallyhq/tally/workers/segment"
)

var (
	bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	gzipReaders sync.Pool // *gzip.Reader, reused through Reset
)

// bodyError refuses a request while its body is read.
type bodyError struct {
	status int
	code   string
	msg    string
}

// readBody reads the request body, gunzipping it when the client says so, and stops as soon as
// the decoded size passes the limit: the limit applies after decompression, so a small gzip bomb
// costs at most limit+1 decoded bytes before it is refused. The Content-Type is not checked:
// clients send application/json (with or without a charset) or text/plain, and the JSON parser
// judges the body either way. The caller returns the buffer with releaseBody.
func readBody(req *http.Request, limit int) (*bytes.Buffer, *bodyError) {
	var src io.Reader = req.Body
	compressed := false
	switch enc := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gunzip(req.Body)
		if err != nil {
			return nil, &bodyError{http.StatusBadRequest, "invalid_gzip", "the body is not valid gzip"}
		}
		defer gzipReaders.Put(zr)
		src, compressed = zr, true
	default:
		return nil, &bodyError{http.StatusUnsupportedMediaType, "unsupported_content_encoding",
			"Content-Encoding " + strconv.Quote(enc) + " is not supported; send gzip or no encoding"}
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	if n := req.ContentLength; n > 0 && n <= int64(limit) && !compressed {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(io.LimitReader(src, int64(limit)+1))
	switch {
	case err != nil && compressed:
		releaseBody(buf)
		return nil, &bodyError{http.StatusBadRequest, "invalid_gzip", "the body is not valid gzip"}
	case err != nil:
		releaseBody(buf)
		return nil, &bodyError{http.StatusBadRequest, "unreadable_body", "the body could not be read"}
	case buf.Len() > limit:
		releaseBody(buf)
		if limit < segment.MaxRequestBytes {
			return nil, &bodyError{http.StatusBadRequest, segment.CodeMessageTooLarge,
				"a message may hold at most " + strconv.Itoa(limit) + " bytes"}
		}
		return nil, &bodyError{http.StatusBadRequest, segment.CodeRequestTooLarge,
			"a request may hold at most " + strconv.Itoa(limit) + " bytes (after decompression)"}
	}
	return buf, nil
}

func releaseBody(buf *bytes.Buffer) {
	if buf.Cap() <= 2*segment.MaxRequestBytes { // a destination batch's large buffer is not kept
		bodyBuffers.Put(buf)
	}
}

func gunzip(r io.Reader) (*gzip.Reader, error) {
	if zr, ok := gzipReaders.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			gzipReaders.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}
