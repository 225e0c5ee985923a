"""Utilities shared by benchmarks, reports and jobs."""
