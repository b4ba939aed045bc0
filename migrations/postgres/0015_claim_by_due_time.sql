-- The relay's claim now reads unpublished rows in the order of `outbox_unpublished_idx`
-- (next_attempt_at, id), earliest due first, so that its plan stops after one batch at any
-- backlog and can be prepared once. The index of unpublished rows in id order that migration
-- 0008 added for the old `ORDER BY id` is read by nothing any more, and every outbox insert
-- and lease paid to maintain it.
DROP INDEX IF EXISTS outbox_unpublished_id_idx;
