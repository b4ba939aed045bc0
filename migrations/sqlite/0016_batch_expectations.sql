-- Keeps the numbering in step with migrations/postgres/0016, which adds the function a
-- one-statement commit calls to abort itself. SQLite runs a batch's parts one by one inside
-- the caller's transaction and checks their counts in the store: nothing to add.
SELECT 1;
