-- Placeholder: number 0002 is reserved for another branch. Migrations must be numbered
-- without gaps, so this empty step stands in for it until that branch is merged; delete
-- this file when the real 0002 arrives.
SELECT 1
