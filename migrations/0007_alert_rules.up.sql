-- objects: alert_configs_user, alert_configs_user_metric
-- Alert rules of every kind (gateway/api/rules.py, README "Alert rules"): what a rule watches
-- moves from fixed columns (metric, condition, threshold, window_seconds) into `params`, whose
-- shape depends on `kind` and is checked here as the API checks it, so a row written by hand
-- or by the seeder is as valid as one the API wrote.

ALTER TABLE alert_configs
    ADD COLUMN kind text NOT NULL DEFAULT 'threshold'
        CHECK (kind IN ('threshold', 'change', 'goal', 'nodata', 'health', 'custom')),
    ADD COLUMN params jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN for_seconds integer NOT NULL DEFAULT 0
        CHECK (for_seconds BETWEEN 0 AND 604800),
    ADD COLUMN keep_firing_for_seconds integer NOT NULL DEFAULT 0
        CHECK (keep_firing_for_seconds BETWEEN 0 AND 604800),
    -- {"from": "22:00", "to": "07:00", "timeZone": "Europe/Paris"} or NULL (no quiet hours)
    ADD COLUMN quiet_hours jsonb;

-- The old conditions in the new shape: above/below are thresholds, change_pct_* changes of
-- `threshold` percent (its magnitude) over `window_seconds` against the window before.
UPDATE alert_configs SET
    kind = CASE WHEN condition IN ('above', 'below') THEN 'threshold' ELSE 'change' END,
    params = CASE
        WHEN condition IN ('above', 'below') THEN
            jsonb_build_object('metric', metric, 'op', condition, 'value', threshold)
        ELSE jsonb_build_object(
            'metric', metric,
            'op', CASE condition WHEN 'change_pct_above' THEN 'up' ELSE 'down' END,
            'percent', abs(threshold),
            'windowSeconds', window_seconds)
    END,
    -- WebSocket delivery is a channel like the others will be (the channel issue adds them).
    channels = CASE WHEN channels @> '[{"type": "websocket"}]'::jsonb THEN channels
                    ELSE '[{"type": "websocket"}]'::jsonb || channels END;

ALTER TABLE alert_configs
    DROP COLUMN metric,
    DROP COLUMN condition,
    DROP COLUMN threshold,
    DROP COLUMN window_seconds,
    ALTER COLUMN kind DROP DEFAULT,
    ALTER COLUMN params DROP DEFAULT,
    ALTER COLUMN channels SET DEFAULT '[{"type": "websocket"}]'::jsonb;


ALTER TABLE alert_configs
    ADD CONSTRAINT alert_configs_params CHECK (
        jsonb_typeof(params) = 'object' AND CASE kind
        WHEN 'threshold' THEN
            params ?& ARRAY['metric', 'op', 'value']
            AND jsonb_typeof(params -> 'metric') = 'string'
            AND params ->> 'op' IN ('above', 'below')
            AND jsonb_typeof(params -> 'value') = 'number'
        WHEN 'change' THEN
            params ?& ARRAY['metric', 'op', 'percent', 'windowSeconds']
            AND jsonb_typeof(params -> 'metric') = 'string'
            AND params ->> 'op' IN ('up', 'down')
            AND CASE WHEN jsonb_typeof(params -> 'percent') = 'number'
                     THEN (params ->> 'percent')::numeric > 0 ELSE false END
            AND CASE WHEN jsonb_typeof(params -> 'windowSeconds') = 'number'
                     THEN (params ->> 'windowSeconds')::numeric > 0 ELSE false END
        WHEN 'goal' THEN
            params ?& ARRAY['goalId', 'event', 'marginPercent', 'beforeSeconds']
            AND jsonb_typeof(params -> 'goalId') = 'string'
            AND params ->> 'event' IN ('reached', 'offTrack')
            AND CASE WHEN jsonb_typeof(params -> 'marginPercent') = 'number'
                     THEN (params ->> 'marginPercent')::numeric BETWEEN 0 AND 100 ELSE false END
            AND CASE WHEN jsonb_typeof(params -> 'beforeSeconds') = 'number'
                     THEN (params ->> 'beforeSeconds')::numeric >= 0 ELSE false END
        WHEN 'nodata' THEN
            params ? 'seconds'
            AND CASE WHEN jsonb_typeof(params -> 'seconds') = 'number'
                     THEN (params ->> 'seconds')::numeric > 0 ELSE false END
            AND coalesce(jsonb_typeof(params -> 'eventType'), 'null') IN ('string', 'null')
        WHEN 'health' THEN
            params ?& ARRAY['check', 'value']
            AND params ->> 'check' IN ('groupLag', 'oldestPendingAge', 'dlqGrowth', 'rollupLag',
                                       'timescaleDown', 'redisDown')
            AND CASE WHEN jsonb_typeof(params -> 'value') = 'number'
                     THEN (params ->> 'value')::numeric >= 0 ELSE false END
        WHEN 'custom' THEN
            jsonb_typeof(params -> 'expression') = 'string'
            AND length(params ->> 'expression') BETWEEN 1 AND 1000
        ELSE false END
    ),
    ADD CONSTRAINT alert_configs_quiet_hours CHECK (
        quiet_hours IS NULL OR (
            jsonb_typeof(quiet_hours) = 'object'
            AND quiet_hours ?& ARRAY['from', 'to', 'timeZone']
            AND coalesce(quiet_hours ->> 'from' ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$', false)
            AND coalesce(quiet_hours ->> 'to' ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$', false)
            AND jsonb_typeof(quiet_hours -> 'timeZone') = 'string'
        )
    ),
    -- Every channel names its type; `target` and the like come with the channel issue.
    ADD CONSTRAINT alert_configs_channels CHECK (
        NOT jsonb_path_exists(channels, '$[*] ? (!(@.type == "websocket" || @.type == "webhook"
            || @.type == "email" || @.type == "slack" || @.type == "discord"))')
    );

-- The API lists a user's rules oldest first; evaluation finds a user's rules by metric.
CREATE INDEX alert_configs_user ON alert_configs (user_id, created_at, id);
CREATE INDEX alert_configs_user_metric ON alert_configs (user_id, (params ->> 'metric'))
    WHERE enabled;
