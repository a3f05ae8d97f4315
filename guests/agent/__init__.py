"""The in-guest agent: a JSON-lines RPC server on stdin/stdout of an SSH exec channel."""
