"""The compiled core: populations of trials, optimizers and schedules, early stopping, data
streams, sharding and memory. No file I/O."""
