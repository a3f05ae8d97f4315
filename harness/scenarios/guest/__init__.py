"""Guest halves of scenarios, run by the agent.

Every module here is loaded by the agent; each ``@method``-decorated function becomes
the agent method ``<module>.<function>``.  Standard library + shipped packages only.
"""
