// Package workers holds no code: it is the home of Tally's data path, one package a job.
//
// The processes:
//   - receiver: HTTP in (Segment's Tracking API), JetStream out. Never imports pgx.
//   - worker: JetStream in, Postgres out; owns the schema, its migrations and the SQL of ingestion.
//   - insights: account and user insights computed from the tally tables, pushed back to a
//     Segment source (only changes, one pusher per source); its own SQL, on the worker's schema.
//   - local: `tally local`, the whole pipeline in one process on an embedded NATS server, reading
//     the SegmentSource and Secret manifests a user would apply; its Pipeline is also what the
//     bench measures.
//   - dlq: `tally dlq`, a person's view of a source's dead letters.
//
// Shared with the operator (package controllers), so that the operator and the processes it
// deploys cannot disagree:
//   - stream: the names and configuration of a source's streams, consumer and dead letters,
//     their set-up, inspection and counts, and the NATS connection every process opens.
//   - source: a source's runtime settings, their defaults, and the files the operator mounts
//     them as.
//   - natsauth: the NATS users of a source's receiver and workers (permissions, inbox prefixes,
//     issuing with an account signing key), for NATS in decentralized JWT mode.
//
// Shared by receiver and worker only:
//   - segment: the Segment message model (decode, validate, normalise).
//   - natsserver: the embedded NATS server of tally local, the bench and the tests, with or
//     without decentralized JWT auth.
package workers
