"""`make bench`: the service measured against the raw Temporal ceiling in one run (issue 7)."""
