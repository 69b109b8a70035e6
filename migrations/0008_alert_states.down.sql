DROP TABLE alert_states;

DELETE FROM alert_history
WHERE status NOT IN ('triggered', 'acknowledged', 'resolved') OR value IS NULL
   OR threshold IS NULL;
ALTER TABLE alert_history DROP CONSTRAINT alert_history_status_check;
ALTER TABLE alert_history ADD CONSTRAINT alert_history_status_check CHECK (
    status IN ('triggered', 'acknowledged', 'resolved')
);
ALTER TABLE alert_history
    DROP COLUMN from_state,
    DROP COLUMN to_state,
    DROP COLUMN seq,
    DROP COLUMN "values",
    DROP COLUMN reason,
    ALTER COLUMN value SET NOT NULL,
    ALTER COLUMN threshold SET NOT NULL;
