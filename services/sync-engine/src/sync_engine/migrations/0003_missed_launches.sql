-- The scheduler looks again at `missed` launches the clock says are still on (a wall clock that ran ahead and
-- was set right again must not cancel them for good): found by their end.
CREATE INDEX launches_missed ON launches (end_at) WHERE state = 'missed';
