"""Runners: the same pure per-image conversion driven by a local process pool or an Apache Beam pipeline."""
