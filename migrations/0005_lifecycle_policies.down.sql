DO $lifecycle$
DECLARE
    rel text;
BEGIN
    IF coalesce(current_setting('timescaledb.license', true), 'apache') <> 'timescale' THEN
        RETURN;
    END IF;
    FOREACH rel IN ARRAY ARRAY['profile_metrics', 'engagement_metrics', 'real_time_events',
                               'metric_aggregations', 'alert_history', 'performance_metrics',
                               'profile_metrics_5min', 'profile_metrics_hourly',
                               'profile_metrics_daily', 'engagement_hourly']
    LOOP
        PERFORM remove_retention_policy(rel::regclass, if_exists => true);
    END LOOP;
    FOREACH rel IN ARRAY ARRAY['profile_metrics', 'engagement_metrics', 'real_time_events',
                               'metric_aggregations', 'alert_history', 'performance_metrics']
    LOOP
        PERFORM remove_compression_policy(rel::regclass, if_exists => true);
        -- Chunks compressed meanwhile must be decompressed before compression can be turned off.
        PERFORM decompress_chunk(c, if_compressed => true) FROM show_chunks(rel::regclass) c;
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress = false)', rel);
    END LOOP;
END
$lifecycle$;
