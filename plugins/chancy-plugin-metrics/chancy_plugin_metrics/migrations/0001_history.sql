-- chancy-plugin-metrics: cluster-wide history, one row per minute, queue, function and
-- outcome. Every worker adds its counts to the row of the minute (an upsert); rows older
-- than the retention are deleted by the leader.
CREATE TABLE {metrics_minutes} (
    bucket            timestamptz NOT NULL,
    queue             text NOT NULL,
    func              text NOT NULL,
    outcome           text NOT NULL,
    jobs              bigint NOT NULL,
    run_seconds_sum   double precision NOT NULL,
    run_seconds_max   double precision NOT NULL,
    wait_seconds_sum  double precision NOT NULL,
    wait_seconds_max  double precision NOT NULL,
    PRIMARY KEY (bucket, queue, func, outcome)
);
