"""Options, markers and fixtures shared by every suite live in the harness's pytest plugin."""

pytest_plugins = ["harness.pytest_plugin"]
