"""The target side: loading by plan, prediction, timing, and picking the fastest verified configuration."""
