"""Containers: OCI spec handling, the native runtime, container and process state."""
