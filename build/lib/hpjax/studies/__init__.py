"""Studies: turn a config into trials, run them through the runner, and analyse their results."""
