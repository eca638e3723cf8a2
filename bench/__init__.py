"""`make bench`: the agent's speed and memory, printed as a table (compare runs as ratios)."""
