-- objects: metric_aggregations, alert_history, performance_metrics

-- Derived per-user series the rollups do not give directly (7/30-day engagement rate,
-- connection growth, week-over-week profile views, posting cadence). Recomputing a point
-- replaces it, hence the unique key without an event id.
CREATE TABLE metric_aggregations (
    time         timestamptz      NOT NULL,
    user_id      text             NOT NULL,
    metric_name  text             NOT NULL,
    period       text             NOT NULL,
    value        double precision,
    sample_count integer          NOT NULL DEFAULT 0,
    metadata     jsonb            NOT NULL DEFAULT '{}'::jsonb,
    computed_at  timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('metric_aggregations', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
SELECT add_dimension('metric_aggregations', by_hash('user_id', 4));
CREATE UNIQUE INDEX metric_aggregations_user_metric_time
    ON metric_aggregations (user_id, metric_name, period, time DESC);

-- Alerts that fired. alert_id is assigned by the alerting stage, so a redelivered evaluation
-- inserts nothing new.
CREATE TABLE alert_history (
    time              timestamptz      NOT NULL,
    user_id           text             NOT NULL,
    alert_id          text             NOT NULL,
    rule_id           uuid,
    metric            text             NOT NULL,
    condition         text             NOT NULL,
    threshold         double precision NOT NULL,
    value             double precision NOT NULL,
    severity          text             NOT NULL
                      CHECK (severity IN ('info', 'warning', 'critical')),
    message           text             NOT NULL,
    status            text             NOT NULL DEFAULT 'triggered'
                      CHECK (status IN ('triggered', 'acknowledged', 'resolved')),
    notifications     jsonb            NOT NULL DEFAULT '[]'::jsonb,
    acknowledged_at   timestamptz,
    resolved_at       timestamptz
);
SELECT create_hypertable('alert_history', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
SELECT add_dimension('alert_history', by_hash('user_id', 4));
CREATE UNIQUE INDEX alert_history_user_time_alert ON alert_history (user_id, time DESC, alert_id);

-- One sample per process every PERF_SAMPLE_INTERVAL, so operators keep history after
-- Prometheus has dropped it. No user, so no space dimension.
CREATE TABLE performance_metrics (
    time               timestamptz      NOT NULL,
    process_kind       text             NOT NULL CHECK (process_kind IN ('gateway', 'worker', 'all')),
    process_name       text             NOT NULL,
    events_in_per_s    double precision NOT NULL DEFAULT 0,
    events_out_per_s   double precision NOT NULL DEFAULT 0,
    batch_size_avg     double precision,
    copy_latency_p99_s double precision,
    group_lag          bigint,
    ws_connections     integer,
    rss_bytes          bigint           NOT NULL,
    cpu_percent        double precision NOT NULL,
    extra              jsonb            NOT NULL DEFAULT '{}'::jsonb
);
SELECT create_hypertable('performance_metrics', by_range('time', INTERVAL '6 hours'),
                         create_default_indexes => false);
CREATE UNIQUE INDEX performance_metrics_process_time
    ON performance_metrics (process_name, time DESC);
CREATE INDEX performance_metrics_time ON performance_metrics (time DESC);
