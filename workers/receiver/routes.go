package receiver

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tallyhq/tally/workers/segment"
)

// DestinationPath is where Segment itself delivers a source's events.
const DestinationPath = "/v1/segment"

// endpoints maps every Tracking API path to what its body holds. Browser and mobile SDKs use the
// one-letter forms; Ruby, Java and classic Android still post batches to /v1/import.
var endpoints = map[string]segment.Endpoint{
	"/v1/identify": {Type: segment.TypeIdentify},
	"/v1/track":    {Type: segment.TypeTrack},
	"/v1/group":    {Type: segment.TypeGroup},
	"/v1/page":     {Type: segment.TypePage},
	"/v1/screen":   {Type: segment.TypeScreen},
	"/v1/alias":    {Type: segment.TypeAlias},
	"/v1/i":        {Type: segment.TypeIdentify},
	"/v1/t":        {Type: segment.TypeTrack},
	"/v1/g":        {Type: segment.TypeGroup},
	"/v1/p":        {Type: segment.TypePage},
	"/v1/s":        {Type: segment.TypeScreen},
	"/v1/a":        {Type: segment.TypeAlias},
	"/v1/batch":    {Batch: true},
	"/v1/import":   {Batch: true},
	"/v1/b":        {Batch: true},
}

func (r *Receiver) routes() http.Handler {
	mux := http.NewServeMux()
	for path, ep := range endpoints {
		mux.Handle("POST "+path, r.ingestHandler(path, ep))
	}
	// Segment's Webhooks destinations (classic and Actions) deliver here, with the method the
	// customer picked.
	destination := r.ingestHandler(DestinationPath, segment.Endpoint{Destination: true})
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch} {
		mux.Handle(method+" "+DestinationPath, destination)
		// The same, naming the source: what a signed delivery to a receiver of many sources needs
		// (see matchDestination).
		mux.Handle(method+" "+DestinationPath+"/{namespace}/{name}", destination)
	}
	mux.HandleFunc("GET "+SettingsPath, r.settings)
	mux.HandleFunc("OPTIONS /v1/", preflight)
	mux.HandleFunc("/v1/", r.notFound)
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", r.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.opts.Gatherer, promhttp.HandlerOpts{}))
	return mux
}

func (r *Receiver) notFound(w http.ResponseWriter, req *http.Request) {
	allowAnyOrigin(w.Header())
	writeError(w, http.StatusNotFound, "not_found", "no Tracking API endpoint at "+req.Method+" "+req.URL.Path)
	r.metrics.requests.WithLabelValues("other", "404").Inc()
	r.metrics.refusals.WithLabelValues("not_found").Inc()
}
