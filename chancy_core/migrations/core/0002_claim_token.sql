-- A fresh token per claim, the completion fence: an outcome is written only if the job
-- is still held under the claim that ran it. The attempt number alone repeats when the
-- same worker claims a job again after it was released (the release takes the attempt
-- back), so a stale outcome of the earlier claim could otherwise overwrite the new one.
ALTER TABLE {jobs} ADD COLUMN claim_token uuid;
