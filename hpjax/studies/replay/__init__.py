"""Schedulers replayed on a finished dense study's own learning curves (:func:`run.replay`)."""
