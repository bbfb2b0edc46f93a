"""Bench: run segmenters on a benchmark set and score them per density tier and noise variant."""
