// Package worker is Tally's worker: it consumes a source's JetStream stream in batches and maps
// group, identify, track, page, screen and alias calls into the tally schema in Postgres, exactly
// once and independently of arrival order. It owns the schema and its migrations.
//
// The rows are a function of the set of messages received, never of their order or batching:
//
//   - Every message has a version: its event timestamp, then its messageId as tie-break.
//   - Each trait key of a user or account keeps the value of the newest version that sent it
//     (null included); keys never sent keep their value.
//   - An account's name is set only by a call carrying a non-empty name (group traits.name or a
//     named traits.company); the newest such call wins.
//   - created_at is the oldest timestamp of a call that wrote the row, updated_at the newest;
//     last_seen_at is the newest of the row's activity calls (not context.active false) and of
//     the events attributed to it. It is kept as a running maximum (max ignores order and
//     repetition) and recomputed from the events only for a row created now (events may predate
//     it) and for an account a re-resolved event left (that event may have been its newest).
//   - account_users: linked and changed_at come from the newest link or unlink (group with
//     userId, identify with traits.company, company.remove); last_associated_at is the newest link.
//   - A track's account is context.groupId, else properties[accountProperty], else the user's
//     account at the track's timestamp: among accounts whose newest link or unlink at or before
//     then is a link, the one linked last (tally.account_at, which walks the user's history
//     newest first and usually stops at the first entry). Every link and unlink is kept in
//     tally.associations, and a batch that adds one re-resolves the user's stored fallback events
//     from its timestamp on, so a late link moves them as if it had come first.
//   - Events are unique per (tenant, messageId); event_catalog counts only inserted rows.
//
// A tenant's transactions take a transaction-scoped advisory lock, so the cross-row steps (the
// fallback account, re-resolution, last_seen_at of new rows) always see every earlier commit.
//
// The worker fetches, decodes and folds the next batch while the current one commits, and acks
// a batch (without waiting for JetStream's confirmation) only after its transaction committed.
package worker
