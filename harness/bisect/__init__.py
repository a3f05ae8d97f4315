"""``harness bisect``: the commit of a kernel or QEMU tree that broke a scenario.

- ``git``: the user's tree: refusals of bad input, the plumbing the bisection needs;
- ``qemu_tree``: a QEMU source tree built out of tree into the harness cache;
- ``step``: one step (build, boot, judge) as ``git bisect run`` runs it, and its exit code;
- ``session``: endpoint checks, ``git bisect run``, progress, and the tree always restored.
"""
