"""Batch-size studies: config, measurement, analysis, prose and runner."""
