-- objects: profile_metrics, engagement_metrics, real_time_events
-- The three hypertables that events land in. 6-hour chunks keep the newest chunk of every
-- table (and its one index) in memory at our write rate; a 4-way hash dimension on user_id
-- spreads a chunk's rows so per-user scans touch a quarter of them.
--
-- Each table has exactly one index, the unique key (user_id, time, event_id): it makes a
-- redelivered batch unable to insert twice (event_id), it serves every per-user time-range
-- query (leading user_id, time), and it contains both partitioning columns as TimescaleDB
-- requires. Every extra index would cost about a third of COPY throughput.

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Profile-level figures. Increment columns hold what one event adds (0 when it adds nothing);
-- absolute columns hold what a profile_snapshot / profile_update reported (NULL otherwise).
CREATE TABLE profile_metrics (
    time                 timestamptz      NOT NULL,
    user_id              text             NOT NULL,
    event_id             text             NOT NULL,
    event_type           text             NOT NULL,
    profile_views        integer          NOT NULL DEFAULT 0,
    search_appearances   integer          NOT NULL DEFAULT 0,
    connections_added    integer          NOT NULL DEFAULT 0,
    connections_removed  integer          NOT NULL DEFAULT 0,
    messages_received    integer          NOT NULL DEFAULT 0,
    total_profile_views  bigint,
    connections          integer,
    followers            integer,
    profile_completeness real             CHECK (profile_completeness BETWEEN 0 AND 100),
    influence_score      real             CHECK (influence_score BETWEEN 0 AND 100),
    ingested_at          timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('profile_metrics', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
SELECT add_dimension('profile_metrics', by_hash('user_id', 4));
CREATE UNIQUE INDEX profile_metrics_user_time_event
    ON profile_metrics (user_id, time DESC, event_id);

-- Post-level engagement: one row per post event; post_id from properties when given.
CREATE TABLE engagement_metrics (
    time             timestamptz NOT NULL,
    user_id          text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    post_id          text,
    posts_published  integer     NOT NULL DEFAULT 0,
    impressions      integer     NOT NULL DEFAULT 0,
    likes            integer     NOT NULL DEFAULT 0,
    comments         integer     NOT NULL DEFAULT 0,
    shares           integer     NOT NULL DEFAULT 0,
    ingested_at      timestamptz NOT NULL DEFAULT now()
);
SELECT create_hypertable('engagement_metrics', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
SELECT add_dimension('engagement_metrics', by_hash('user_id', 4));
CREATE UNIQUE INDEX engagement_metrics_user_time_event
    ON engagement_metrics (user_id, time DESC, event_id);

-- Every accepted event as received, for the activity feed and for replays.
CREATE TABLE real_time_events (
    time         timestamptz      NOT NULL,
    user_id      text             NOT NULL,
    event_id     text             NOT NULL,
    event_type   text             NOT NULL,
    value        double precision NOT NULL DEFAULT 1,
    properties   jsonb            NOT NULL DEFAULT '{}'::jsonb,
    received_at  timestamptz      NOT NULL,
    ingested_at  timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('real_time_events', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
SELECT add_dimension('real_time_events', by_hash('user_id', 4));
CREATE UNIQUE INDEX real_time_events_user_time_event
    ON real_time_events (user_id, time DESC, event_id);
