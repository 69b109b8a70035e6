-- objects: profile_metrics_5min, profile_metrics_hourly, profile_metrics_daily, engagement_hourly
-- The rollups the API reads. Same names and columns in both TimescaleDB editions:
--   full ('timescale' license): continuous aggregates with refresh policies and real-time
--     aggregation (materialized_only = false), so the newest, not yet materialized data shows;
--   Apache: hypertables of the same shape, unique on (user_id, bucket), maintained by the
--     rollup stage, which recomputes each affected bucket from raw rows (idempotent upserts).
-- The edition is read from the server, never assumed; see DESIGN.md section 4.
DO $rollups$
DECLARE
    full_edition constant boolean :=
        coalesce(current_setting('timescaledb.license', true), 'apache') = 'timescale';
    spec record;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('profile_metrics_5min',   INTERVAL '5 minutes', INTERVAL '1 day',
             INTERVAL '1 day',   INTERVAL '5 minutes', INTERVAL '1 minute'),
            ('profile_metrics_hourly', INTERVAL '1 hour',    INTERVAL '7 days',
             INTERVAL '3 days',  INTERVAL '1 hour',    INTERVAL '15 minutes'),
            ('profile_metrics_daily',  INTERVAL '1 day',     INTERVAL '30 days',
             INTERVAL '7 days',  INTERVAL '1 day',     INTERVAL '1 hour')
        ) AS s(name, width, chunk, start_offset, end_offset, schedule)
    LOOP
        IF full_edition THEN
            EXECUTE format($sql$
                CREATE MATERIALIZED VIEW %I
                WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
                SELECT time_bucket(%L::interval, time) AS bucket,
                       user_id,
                       sum(profile_views)::bigint       AS profile_views,
                       sum(search_appearances)::bigint  AS search_appearances,
                       sum(connections_added)::bigint   AS connections_added,
                       sum(connections_removed)::bigint AS connections_removed,
                       sum(messages_received)::bigint   AS messages_received,
                       last(total_profile_views, time)
                           FILTER (WHERE total_profile_views IS NOT NULL) AS total_profile_views,
                       last(connections, time)
                           FILTER (WHERE connections IS NOT NULL) AS connections,
                       last(followers, time)
                           FILTER (WHERE followers IS NOT NULL) AS followers,
                       last(profile_completeness, time)
                           FILTER (WHERE profile_completeness IS NOT NULL) AS profile_completeness,
                       last(influence_score, time)
                           FILTER (WHERE influence_score IS NOT NULL) AS influence_score,
                       count(*)::bigint AS events
                FROM profile_metrics
                GROUP BY 1, 2
                WITH NO DATA$sql$, spec.name, spec.width);
            PERFORM add_continuous_aggregate_policy(spec.name::regclass,
                start_offset => spec.start_offset, end_offset => spec.end_offset,
                schedule_interval => spec.schedule);
        ELSE
            EXECUTE format($sql$
                CREATE TABLE %I (
                    bucket               timestamptz NOT NULL,
                    user_id              text        NOT NULL,
                    profile_views        bigint      NOT NULL DEFAULT 0,
                    search_appearances   bigint      NOT NULL DEFAULT 0,
                    connections_added    bigint      NOT NULL DEFAULT 0,
                    connections_removed  bigint      NOT NULL DEFAULT 0,
                    messages_received    bigint      NOT NULL DEFAULT 0,
                    total_profile_views  bigint,
                    connections          integer,
                    followers            integer,
                    profile_completeness real,
                    influence_score      real,
                    events               bigint      NOT NULL DEFAULT 0
                )$sql$, spec.name);
            PERFORM create_hypertable(spec.name::regclass, by_range('bucket', spec.chunk),
                                      create_default_indexes => false);
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (user_id, bucket DESC)',
                           spec.name || '_user_bucket', spec.name);
        END IF;
    END LOOP;

    IF full_edition THEN
        CREATE MATERIALIZED VIEW engagement_hourly
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
               user_id,
               sum(posts_published)::bigint AS posts_published,
               sum(impressions)::bigint     AS impressions,
               sum(likes)::bigint           AS likes,
               sum(comments)::bigint        AS comments,
               sum(shares)::bigint          AS shares,
               (sum(likes) + sum(comments) + sum(shares))::double precision
                   / NULLIF(sum(impressions), 0) AS engagement_rate,
               count(*)::bigint AS events
        FROM engagement_metrics
        GROUP BY 1, 2
        WITH NO DATA;
        PERFORM add_continuous_aggregate_policy('engagement_hourly',
            start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
            schedule_interval => INTERVAL '15 minutes');
    ELSE
        CREATE TABLE engagement_hourly (
            bucket          timestamptz NOT NULL,
            user_id         text        NOT NULL,
            posts_published bigint      NOT NULL DEFAULT 0,
            impressions     bigint      NOT NULL DEFAULT 0,
            likes           bigint      NOT NULL DEFAULT 0,
            comments        bigint      NOT NULL DEFAULT 0,
            shares          bigint      NOT NULL DEFAULT 0,
            -- Derived from the stored sums so it can never disagree with them.
            engagement_rate double precision GENERATED ALWAYS AS (
                (likes + comments + shares)::double precision / NULLIF(impressions, 0)
            ) STORED,
            events          bigint      NOT NULL DEFAULT 0
        );
        PERFORM create_hypertable('engagement_hourly', by_range('bucket', INTERVAL '7 days'),
                                  create_default_indexes => false);
        CREATE UNIQUE INDEX engagement_hourly_user_bucket ON engagement_hourly (user_id, bucket DESC);
    END IF;
END
$rollups$;
