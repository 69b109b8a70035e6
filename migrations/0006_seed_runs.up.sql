-- objects: seed_runs
-- What the development seeder loaded, so `analytics seed clear` removes exactly that and
-- nothing a real producer sent.
CREATE TABLE seed_runs (
    id          bigserial   PRIMARY KEY,
    seed        integer     NOT NULL,
    days        integer     NOT NULL CHECK (days > 0),
    user_ids    text[]      NOT NULL,
    rows        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
