"""Sans-IO core of the hcsshim bridge protocol: framing, ids, typed messages, session state."""
