-- Back to 0003's columns. Thresholds and changes return as conditions; rules of the kinds
-- 0003 cannot express (goal, nodata, health, custom) are deleted, and the websocket channel,
-- which 0003 did not list, is dropped from `channels`.
DELETE FROM alert_configs WHERE kind NOT IN ('threshold', 'change');

DROP INDEX IF EXISTS alert_configs_user_metric;
DROP INDEX IF EXISTS alert_configs_user;
ALTER TABLE alert_configs
    DROP CONSTRAINT alert_configs_params,
    DROP CONSTRAINT alert_configs_quiet_hours,
    DROP CONSTRAINT alert_configs_channels,
    ADD COLUMN metric text,
    ADD COLUMN condition text
        CHECK (condition IN ('above', 'below', 'change_pct_above', 'change_pct_below')),
    ADD COLUMN threshold double precision,
    ADD COLUMN window_seconds integer NOT NULL DEFAULT 3600 CHECK (window_seconds > 0),
    ALTER COLUMN channels SET DEFAULT '[]'::jsonb;

UPDATE alert_configs SET
    metric = params ->> 'metric',
    condition = CASE WHEN kind = 'threshold' THEN params ->> 'op'
                     WHEN params ->> 'op' = 'up' THEN 'change_pct_above'
                     ELSE 'change_pct_below' END,
    threshold = CASE WHEN kind = 'threshold' THEN (params ->> 'value')::float8
                     ELSE (params ->> 'percent')::float8 END,
    window_seconds = CASE WHEN kind = 'change' THEN (params ->> 'windowSeconds')::integer
                          ELSE 3600 END,
    channels = coalesce((SELECT jsonb_agg(c) FROM jsonb_array_elements(channels) AS c
                         WHERE c ->> 'type' <> 'websocket'), '[]'::jsonb);

ALTER TABLE alert_configs
    ALTER COLUMN metric SET NOT NULL,
    ALTER COLUMN condition SET NOT NULL,
    ALTER COLUMN threshold SET NOT NULL,
    DROP COLUMN kind,
    DROP COLUMN params,
    DROP COLUMN for_seconds,
    DROP COLUMN keep_firing_for_seconds,
    DROP COLUMN quiet_hours;
CREATE INDEX alert_configs_user_metric ON alert_configs (user_id, metric) WHERE enabled;
