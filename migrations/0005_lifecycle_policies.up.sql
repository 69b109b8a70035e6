-- objects:
-- Compression after 7 days and retention after 90 days, where the edition has policies.
-- The Apache edition has neither compression nor background policies: there, retention is
-- the maintenance task's drop_chunks call, driven by RETENTION_DAYS, and nothing is compressed.
-- Daily rollups outlive raw data: they are what year-over-year views read.
DO $lifecycle$
DECLARE
    raw_table text;
BEGIN
    IF coalesce(current_setting('timescaledb.license', true), 'apache') <> 'timescale' THEN
        RAISE NOTICE 'timescaledb.license is apache: no compression, retention by maintenance task';
        RETURN;
    END IF;
    FOREACH raw_table IN ARRAY ARRAY['profile_metrics', 'engagement_metrics',
                                     'real_time_events', 'metric_aggregations', 'alert_history']
    LOOP
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, '
                       'timescaledb.compress_segmentby = %L, '
                       'timescaledb.compress_orderby = %L)',
                       raw_table, 'user_id', 'time DESC');
        PERFORM add_compression_policy(raw_table::regclass, INTERVAL '7 days');
        PERFORM add_retention_policy(raw_table::regclass, INTERVAL '90 days');
    END LOOP;
    ALTER TABLE performance_metrics SET (timescaledb.compress,
        timescaledb.compress_segmentby = 'process_name', timescaledb.compress_orderby = 'time DESC');
    PERFORM add_compression_policy('performance_metrics', INTERVAL '7 days');
    PERFORM add_retention_policy('performance_metrics', INTERVAL '90 days');

    PERFORM add_retention_policy('profile_metrics_5min', INTERVAL '90 days');
    PERFORM add_retention_policy('profile_metrics_hourly', INTERVAL '90 days');
    PERFORM add_retention_policy('engagement_hourly', INTERVAL '90 days');
    PERFORM add_retention_policy('profile_metrics_daily', INTERVAL '730 days');
END
$lifecycle$;
