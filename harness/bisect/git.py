"""The user's git tree as ``harness bisect`` sees it: checks that refuse bad input, and
the few plumbing calls the bisection needs (resolve, ancestry, position, subjects).

Every refusal is a ``BisectInputError`` whose one line names the tree and what is wrong.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, HarnessError, PrerequisiteError

#: at most this many dirty files are named in a refusal
NAMED_FILES = 8


class BisectInputError(ConfigError):
    """``harness bisect`` refuses its input: names the tree, the revision or the files."""


class GitError(HarnessError):
    """A git command the bisection needs failed: names the command and git's message."""


@dataclass(frozen=True)
class Position:
    """Where a tree stands: a branch (``refs/heads/...``) or a detached commit."""

    commit: str
    branch: str | None

    def describe(self) -> str:
        """``branch NAME`` or ``detached HEAD at COMMIT``."""
        if self.branch:
            return f"branch {self.branch.removeprefix('refs/heads/')} ({self.commit[:12]})"
        return f"detached HEAD at {self.commit[:12]}"


class Git:
    """git commands run in one work tree (``git -C TREE``), with C-locale output."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    @classmethod
    def open(cls, tree: Path) -> Git:
        """The tree at ``tree``; BisectInputError when it is not a git work tree."""
        if not tree.is_dir():
            raise BisectInputError(f"{tree}: no such directory")
        git = cls(tree.resolve())
        probe = git.run("rev-parse", "--is-inside-work-tree", check=False)
        if probe.returncode != 0 or probe.stdout.strip() != "true":
            raise BisectInputError(f"{tree}: not a git work tree (bisect needs the tree's history)")
        return git

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``git -C TREE ARGS``; GitError naming the command when it fails and ``check``."""
        env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
        try:
            done = subprocess.run(
                ["git", "-C", str(self.tree), *args],
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise PrerequisiteError("git not found (apt-get install git)") from None
        if check and done.returncode != 0:
            message = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise GitError(f"git {' '.join(args)}: {message[0] if message else done.returncode}")
        return done

    def out(self, *args: str) -> str:
        """The stripped stdout of a git command that must succeed."""
        return self.run(*args).stdout.strip()

    def resolve(self, rev: str, option: str = "revision") -> str:
        """The full commit id ``rev`` names; BisectInputError when it names none."""
        done = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
                        check=False)  # fmt: skip
        if done.returncode != 0 or not done.stdout.strip():
            raise BisectInputError(f"{option} {rev}: unknown revision in {self.tree}")
        return done.stdout.strip()

    def head(self) -> str:
        """The checked-out commit."""
        return self.resolve("HEAD", "HEAD")

    def position(self) -> Position:
        """The branch HEAD is on, or the detached commit."""
        commit = self.head()
        branch = self.run("symbolic-ref", "-q", "HEAD", check=False).stdout.strip() or None
        return Position(commit, branch)

    def subject(self, commit: str) -> str:
        """A commit's subject line."""
        return self.out("log", "-1", "--format=%s", commit)

    def dirty_files(self) -> list[str]:
        """Tracked files with uncommitted changes (staged or not): a checkout would lose them.

        Untracked files survive a checkout and are not listed.
        """
        text = self.run(
            "status", "--porcelain=v1", "--untracked-files=no", "--ignore-submodules=none"
        ).stdout  # not stripped: each line starts with its two status columns
        return [line[3:] for line in text.splitlines() if line.strip()]

    def bisect_in_progress(self) -> bool:
        """True while a ``git bisect`` session is open in this repository."""
        path = Path(self.out("rev-parse", "--git-path", "BISECT_START"))
        return (path if path.is_absolute() else self.tree / path).exists()

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True when ``ancestor`` is reachable from ``descendant``."""
        done = self.run("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        if done.returncode not in (0, 1):
            raise GitError(f"git merge-base --is-ancestor: {done.stderr.strip()}")
        return done.returncode == 0

    def candidates(self, bad: str, goods: list[str]) -> list[str]:
        """Commits that may be the first bad one: ``bad`` and what it adds to the goods."""
        return self.out("rev-list", bad, *(f"^{g}" for g in goods)).split()

    def bisect_refs(self) -> tuple[str | None, list[str], list[str]]:
        """The bisection's bad commit, good commits and skipped commits (``refs/bisect/*``)."""
        refs = self.out("for-each-ref", "--format=%(refname) %(objectname)", "refs/bisect/")
        bad, goods, skipped = None, [], []
        for line in refs.splitlines():
            name, _, commit = line.partition(" ")
            if name == "refs/bisect/bad":
                bad = commit
            elif name.startswith("refs/bisect/good-"):
                goods.append(commit)
            elif name.startswith("refs/bisect/skip-"):
                skipped.append(commit)
        return bad, goods, skipped


def check_inputs(git: Git, good: str, bad: str) -> tuple[str, str]:
    """The good and bad commit ids, after refusing what a bisection cannot start from.

    Refuses (BisectInputError, one line): a bisection already in progress, uncommitted
    changes to tracked files (naming them), an unknown revision, good == bad, and a good
    commit that is not an ancestor of the bad one.
    """
    if git.bisect_in_progress():
        raise BisectInputError(
            f"{git.tree}: a git bisect is already in progress (finish it or `git bisect reset`)"
        )
    dirty = git.dirty_files()
    if dirty:
        named = ", ".join(dirty[:NAMED_FILES])
        more = f" and {len(dirty) - NAMED_FILES} more" if len(dirty) > NAMED_FILES else ""
        raise BisectInputError(
            f"{git.tree}: uncommitted changes a checkout would lose: {named}{more}"
            " (commit or stash them first)"
        )
    good_id = git.resolve(good, "--good")
    bad_id = git.resolve(bad, "--bad")
    if good_id == bad_id:
        raise BisectInputError(f"--good {good} and --bad {bad} are the same commit {good_id[:12]}")
    if not git.is_ancestor(good_id, bad_id):
        raise BisectInputError(f"--good {good} ({good_id[:12]}) is not an ancestor of --bad {bad}")
    return good_id, bad_id
