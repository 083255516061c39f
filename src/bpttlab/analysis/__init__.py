"""Analysis: reading sweeps, statistics, paired comparisons, the report and its figures."""
