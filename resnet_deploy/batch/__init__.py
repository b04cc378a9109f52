"""Offline inference at any scale: ``resnet-deploy batch`` on this machine or on Ray Data.

``inputs`` lists what to read, ``shards`` writes the Parquet output, ``record`` keeps the run record,
``job`` runs the whole (and resumes it), ``ray_data`` is the Ray form of the same pipeline.
"""
