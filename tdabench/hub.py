"""The Hugging Face hub, read at commits: a moving name (``main``, a tag) resolved once to the
commit it points at, so that what a run read can be named and read again.

``huggingface_hub`` reads ``HF_ENDPOINT`` (a mirror, or a stand-in hub in the tests) and
``HF_HUB_OFFLINE`` as usual; a resolution needs the hub, a commit hash given as the revision does
not (its files may already be in the local cache).
"""

from __future__ import annotations

import re
import sys

from tdabench.errors import UserError

COMMIT = re.compile(r"[0-9a-f]{40}")
# (repo type, repo id, revision) -> commit, for this process: a command that reads one repo for
# several tasks (the four paper benchmarks share a dataset) reads them all at one commit.
_resolved: dict[tuple[str, str, str], str] = {}


def is_commit(revision: str | None) -> bool:
    """A full commit hash (40 lowercase hex digits): the only revision that cannot move."""
    return isinstance(revision, str) and COMMIT.fullmatch(revision) is not None


def resolve_commit(repo_id: str, repo_type: str, revision: str | None = None, fix: str = "") -> str:
    """The commit that ``revision`` (a branch or tag; None or "" = ``main``) of the hub repo
    ``repo_id`` (``repo_type`` ``"model"`` or ``"dataset"``) points at now; a commit hash is
    returned as it is, without asking the hub; a name is resolved once per process. Prints
    ``<repo> <revision> pinned to <commit>`` on stderr. UserError in one line when the hub cannot
    answer (offline, no such repo or revision), ending with ``fix`` (how to give a commit or a
    local copy instead)."""
    if is_commit(revision):
        return revision
    revision = revision or "main"
    if (repo_type, repo_id, revision) in _resolved:
        return _resolved[(repo_type, repo_id, revision)]
    try:
        from huggingface_hub import HfApi

        sha = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    except Exception as err:  # offline, unknown repo or revision, hub error: all end the same way
        kind = "dataset" if repo_type == "dataset" else "model"
        raise UserError(
            f"could not resolve {revision!r} of the {kind} {repo_id} on the Hugging Face hub to a commit "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else 'no detail'}); "
            + (fix or "with no hub, give a commit hash or a local copy")) from None
    if not is_commit(sha):
        raise UserError(f"the hub answered {sha!r} for {revision!r} of {repo_id}: not a commit hash")
    print(f"{repo_id} {revision} pinned to {sha}", file=sys.stderr)
    _resolved[(repo_type, repo_id, revision)] = sha
    return sha
