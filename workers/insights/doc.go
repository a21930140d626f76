// Package insights pushes what Tally knows about a tenant's accounts and users back to a Segment
// source, so that every tool behind Segment (CRM, email, warehouse) sees it. One job: compute the
// insights from the tally tables, diff them against what was last delivered, deliver the changes
// with Segment's Go client (analytics-go), remember what Segment accepted.
//
// What is sent, per tenant, computed at push time ("now") on event time (events.timestamp):
//
//   - per account in tally.accounts, a group call (groupId = account_id, anonymousId
//     "tally-insights", since no user makes it) with the traits tally_users (linked users),
//     tally_active_users_7d and tally_active_users_30d (linked users with any event in
//     (now-7d, now] resp. (now-30d, now]), tally_events_7d and tally_events_30d (events
//     attributed to the account in the window) and tally_last_seen_at (accounts.last_seen_at,
//     ISO-8601 in UTC with milliseconds, null when never seen);
//   - per user in tally.users, an identify call (userId) with tally_events_30d (the user's events
//     in the window), tally_last_seen_at and tally_accounts (accounts the user is linked to).
//
// Only changes are sent. tally.insights_delivered keeps, per pushing source and entity, the traits
// Segment last answered 200 for; an entity goes out when its traits differ, and is marked there
// only after that answer. So a restart, a failover or a failed push resends nothing that was
// delivered, and loses nothing that was not. A message's id is a hash of the entity, the traits it
// carries and the traits it replaces: a delivery retried after an unanswered request has the same
// id (Segment deduplicates it), and a value that returns to an earlier one (A, B, A) gets a new id
// rather than one Segment would drop as a duplicate of the first A.
//
// Delivery: entities are read, diffed and delivered a page at a time (keyset order on the id), in
// gzip-compressed batches (plain JSON for an endpoint that answers 415 to gzip). A request that
// fails for want of the endpoint (unreachable, 5xx, 429) is retried by analytics-go with a bounded
// backoff (ten attempts, Retry-After honoured up to the cap); a 4xx is not retried within the push
// and is reported. A failed page ends the push, so a down endpoint sees one page's requests per
// attempt, never the whole tenant; the next attempt comes after a growing backoff (the interval
// after a 4xx).
//
// One pusher per source: a pusher pushes only while it holds a Postgres session advisory lock
// keyed on tenant and source, on its one dedicated connection (also its whole connection budget,
// apart from the workers' pool). Replicas that do not hold it are standbys that try again.
//
// No feedback loop: every message carries context.library {name: "tally-insights"} and
// context.active false. When the insights write key feeds back into Tally, the worker treats them
// as the group and identify calls they are: traits merge, but context.active false keeps
// last_seen_at where it is, and group and identify never create events or catalog rows, so the
// next push finds nothing changed.
//
// The status of the pushes (tally.insights_pushes) is what the operator reports in
// status.insights and the InsightsDelivered condition (ReadStatus).
package insights
