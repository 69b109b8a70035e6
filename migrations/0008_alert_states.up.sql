-- objects: alert_states
-- The alerting group's memory (pipeline/stages/alerting.py): one row per (rule, user), the
-- fields of schemas/alert_eval.py:AlertState. The stage writes a row only if its `seq` is
-- still the one the evaluation started from (compare-and-set), in the transaction that
-- records the evaluation's transitions in alert_history.
CREATE TABLE alert_states (
    rule_id         uuid        NOT NULL REFERENCES alert_configs (id) ON DELETE CASCADE,
    user_id         text        NOT NULL,
    state           text        NOT NULL
                    CHECK (state IN ('inactive', 'pending', 'firing', 'resolved', 'nodata',
                                     'error')),
    since           timestamptz,
    held_since      timestamptz,
    cleared_at      timestamptz,
    seq             integer     NOT NULL CHECK (seq >= 0),
    notified_at     timestamptz,
    firing_notified boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (rule_id, user_id)
);

-- alert_history records every transition of the state machine, not only firings: its state
-- before and after, its number, the values that caused it and the reason. `alert_id` is the
-- transition's key (`<rule>:<user>:<seq>`) and `time` its instant, so the unique index of
-- 0002, alert_history_user_time_alert (user_id, time DESC, alert_id), which holds both
-- partitioning columns, already refuses a transition written twice (the stage inserts with
-- ON CONFLICT DO NOTHING). A custom or no-data rule has no single value or threshold.
-- `values` has no default: the full edition refuses a column with a non-constant default
-- (a jsonb cast is one) on a hypertable with compression enabled; the stage always writes it,
-- and rows from before this migration read as null.
ALTER TABLE alert_history
    ADD COLUMN from_state text,
    ADD COLUMN to_state text,
    ADD COLUMN seq integer,
    ADD COLUMN "values" jsonb,
    ADD COLUMN reason text,
    ALTER COLUMN value DROP NOT NULL,
    ALTER COLUMN threshold DROP NOT NULL;
-- `status` names the transition's new state: `triggered` (firing) and `resolved` as before,
-- and the states a rule passes through on the way.
ALTER TABLE alert_history DROP CONSTRAINT alert_history_status_check;
ALTER TABLE alert_history ADD CONSTRAINT alert_history_status_check CHECK (
    status IN ('triggered', 'acknowledged', 'resolved', 'inactive', 'pending', 'nodata', 'error')
);

-- "Enabled rules of these users": alert_configs_user_metric (user_id, params ->> 'metric')
-- WHERE enabled, from 0007, serves `user_id = ANY($1) AND enabled`; no new index.
