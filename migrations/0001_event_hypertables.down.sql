-- The extension stays: it was created by a superuser and other objects may depend on it.
DROP TABLE IF EXISTS real_time_events;
DROP TABLE IF EXISTS engagement_metrics;
DROP TABLE IF EXISTS profile_metrics;
