"""Evaluation helpers: the procedural shapes data set and its detector."""
