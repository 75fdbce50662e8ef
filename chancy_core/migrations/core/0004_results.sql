-- Results and progress (issue 11). `result` is the JSON a job's function returned (NULL
-- for None, a failure, or a result that could not be stored); `result_error` says why a
-- successful job's result was not stored (not JSON, too big, not sent back by its
-- process); `progress` is the last object with "fraction" (0..1) and "message" the running
-- (or last) attempt reported. The worker writes all three under the claim's fence.
ALTER TABLE {jobs}
    ADD COLUMN result jsonb,
    ADD COLUMN result_error text,
    ADD COLUMN progress jsonb;
