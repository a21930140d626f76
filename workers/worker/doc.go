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
//     named traits.company); the newest such call wins. A group call without name for an unknown
//     account creates it unnamed: counted per source (tally_worker_unnamed_accounts_created_total)
//     and listed per tenant by UnnamedAccounts.
//   - An account id sent as a number is one account wherever it arrives (groupId, which the
//     receiver forwards as the number's text, traits.company.id, context.groupId, the account
//     property): an id that is the text of an integral JSON number is keyed on its plain decimal
//     form (12345.0, 1.2345e4, "12345" give "12345"); other numbers keep their JSON text.
//   - created_at is the oldest timestamp of a call that wrote the row, updated_at the newest;
//     last_seen_at is the newest of the row's activity calls (not context.active false) and of
//     the events attributed to it. It is kept as a running maximum (max ignores order and
//     repetition) and recomputed from the events only for a row created now (events may predate
//     it) and for an account or user a re-resolved or re-attributed event left (that event may
//     have been its newest).
//   - account_users: linked and changed_at come from the newest link or unlink (group with
//     userId, identify with traits.company, company.remove true or "true"); last_associated_at
//     is the newest link. The user's company trait is stored without the remove marker.
//   - A track's account is context.groupId, else the accountProperty of properties (the property
//     of that exact name when it holds an id, else the dotted path: "account.id" reads
//     properties.account.id), else the user's account at the track's timestamp: among accounts
//     whose newest link or unlink at or before then is a link, the one linked last; before the
//     user's first link, that first link's account (tally.account_at, which walks the user's
//     history newest first and usually stops at the first entry). Every link and unlink is kept
//     in tally.associations, and a batch that adds one re-resolves the user's stored fallback
//     events from its timestamp on (all of them when the user has no older link), so a late link
//     moves them as if it had come first.
//   - An event (track, page, screen) without a userId belongs to the user its anonymousId is tied
//     to (identify with userId and anonymousId, alias previousId to userId), and so to that user's
//     account. An anonymousId keeps the tie of the oldest version (tally.anonymous_ties); a batch
//     that sets a tie re-attributes the anonymousId's stored events (events.user_from 'anonymous').
//   - Events are unique per (tenant, messageId); event_catalog counts only inserted rows.
//   - A user-deletion request (type delete) at version D voids every message about its userId of
//     version D or older, and the anonymous events of the anonymousIds tied to the user then: the
//     stored rows are trimmed to what newer messages wrote (tally.forget_user: events, links,
//     trait keys, the row itself when nothing newer wrote it; accounts keep what void calls said
//     about them) and a tombstone (tally.deletions) keeps void messages of later batches out. The
//     rows are those of the message set without the void messages, except two estimates when a
//     deletion arrives after newer messages of its user: created_at (from the newer part's trait
//     versions, links and activity) and an alias's first_aliased_at. An anonymousId tied to the
//     deleted user and to another one settles by arrival order, as ties keep only the oldest.
//
// A tenant's transactions lock rows of tally.tenant_locks: the slots of the users they touch and,
// at their end, the accounts they write (locks.go). The cross-row steps (the fallback account,
// ties, re-resolution, last_seen_at of new rows) then see every earlier commit they depend on,
// while batches of users in other slots, a partitioned source's other partitions, commit at once.
//
// The worker fetches, decodes and folds the next batch while the current one commits, and acks
// a batch (without waiting for JetStream's confirmation) only after its transaction committed.
package worker
