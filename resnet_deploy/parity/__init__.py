"""Comparing outputs of two backends: metrics, tolerances, reports."""
