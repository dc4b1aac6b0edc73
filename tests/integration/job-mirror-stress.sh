#!/bin/bash
# blockdev-mirror copy-mode=write-blocking under 64 requests in flight,
# cancelled in READY: scenario M of job-backup-stress.sh (see there), run
# as a test of its own so that each stays under a minute.
JOB_STRESS_SCENARIOS=M exec bash "$(dirname "$0")/job-backup-stress.sh"
