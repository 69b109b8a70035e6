-- objects: alert_configs, user_goals
-- Plain tables: few rows per user, updated in place, read by id.

CREATE TABLE alert_configs (
    id                uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           text             NOT NULL,
    name              text             NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    metric            text             NOT NULL,
    condition         text             NOT NULL
                      CHECK (condition IN ('above', 'below', 'change_pct_above',
                                           'change_pct_below')),
    threshold         double precision NOT NULL,
    window_seconds    integer          NOT NULL DEFAULT 3600 CHECK (window_seconds > 0),
    cooldown_seconds  integer          NOT NULL DEFAULT 3600 CHECK (cooldown_seconds >= 0),
    severity          text             NOT NULL DEFAULT 'warning'
                      CHECK (severity IN ('info', 'warning', 'critical')),
    -- [{"type": "webhook"|"email"|"slack"|"discord", "target": "..."}]
    channels          jsonb            NOT NULL DEFAULT '[]'::jsonb
                      CHECK (jsonb_typeof(channels) = 'array'),
    enabled           boolean          NOT NULL DEFAULT true,
    last_triggered_at timestamptz,
    created_at        timestamptz      NOT NULL DEFAULT now(),
    updated_at        timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX alert_configs_user_metric ON alert_configs (user_id, metric) WHERE enabled;

CREATE TABLE user_goals (
    id              uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         text             NOT NULL,
    metric          text             NOT NULL,
    target_value    double precision NOT NULL,
    baseline_value  double precision,
    starts_at       timestamptz      NOT NULL DEFAULT now(),
    deadline        timestamptz      NOT NULL,
    status          text             NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'achieved', 'missed', 'cancelled')),
    achieved_at     timestamptz,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CHECK (deadline > starts_at)
);
CREATE INDEX user_goals_user ON user_goals (user_id, status);
