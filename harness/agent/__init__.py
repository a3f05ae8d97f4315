"""The in-guest agent, reached over SSH: per-run keys, code shipping, JSON-lines RPC."""
