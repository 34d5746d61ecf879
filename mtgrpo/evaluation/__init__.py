"""Evaluation: held-out runs of an episode protocol (`mtgrpo eval`), its generation backends, and plots."""
