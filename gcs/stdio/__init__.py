"""Stdio of processes: ptys and the relays between them and the host's connections."""
