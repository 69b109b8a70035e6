DROP TABLE IF EXISTS user_goals;
DROP TABLE IF EXISTS alert_configs;
