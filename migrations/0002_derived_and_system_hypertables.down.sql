DROP TABLE IF EXISTS performance_metrics;
DROP TABLE IF EXISTS alert_history;
DROP TABLE IF EXISTS metric_aggregations;
