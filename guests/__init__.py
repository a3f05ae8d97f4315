"""Code that runs inside guests: the agent and its guest-side helpers."""
