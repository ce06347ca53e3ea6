"""Representative data: calibration sets, thresholds, tolerances (issues 3-4)."""
