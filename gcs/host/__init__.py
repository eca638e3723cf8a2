"""Host-side tooling: the bridge client a host uses to drive the agent, a launcher for a
local-mode agent, and the `gcsctl` command."""
