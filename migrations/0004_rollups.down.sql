-- Drops whichever form 0004 created: a continuous aggregate or a plain hypertable.
DO $rollups$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['engagement_hourly', 'profile_metrics_daily',
                                'profile_metrics_hourly', 'profile_metrics_5min']
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class WHERE relname = name AND relkind = 'v'
                   AND relnamespace = 'public'::regnamespace) THEN
            EXECUTE format('DROP MATERIALIZED VIEW %I', name);
        ELSE
            EXECUTE format('DROP TABLE IF EXISTS %I', name);
        END IF;
    END LOOP;
END
$rollups$;
