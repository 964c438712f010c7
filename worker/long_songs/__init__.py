"""Long songs across workers: cut into chunk jobs and stitched back together."""
