-- One row per election: who holds the lease, and until when on the database's clock. A
-- worker leads only while it holds an unexpired lease; the row is never deleted.
CREATE TABLE {leadership} (
    election     text PRIMARY KEY,
    holder       text NOT NULL,
    acquired_at  timestamptz NOT NULL,
    renewed_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
