"""Processes the agent starts: spawning, reaping, the UVM process table."""
