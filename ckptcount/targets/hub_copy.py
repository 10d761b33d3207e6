"""What huggingface_hub has already downloaded of a Hub revision: the audit's answer without the network (offline, or
the Hub unreachable) when no headers are cached (:mod:`.cache`)."""

from __future__ import annotations

import os
from dataclasses import replace
from types import MappingProxyType

from ..errors import ReadError
from ..records import Checkpoint
from ..sources.files import entries, inside, ref_commit
from .hub_target import HubTarget, hub_cache
from .local import load_local


def downloaded(target: str, t: HubTarget, rev: str) -> Checkpoint | None:
    """Without the network (offline, or the Hub unreachable) and without cached headers: this revision as
    huggingface_hub downloaded it into its own cache (``hf download``, ``from_pretrained``), counted from those
    files as a local folder is; None when it has none.

    The snapshot is found as huggingface_hub finds it offline: ``<hub cache>/models--org--name/refs/<revision>``
    names the commit (a commit sha names itself) and ``snapshots/<commit>/`` holds the files. A file or folder of
    the target that was not downloaded is None too (a partial download that lacks a shard fails on that shard)."""
    from huggingface_hub.file_download import repo_folder_name  # huggingface_hub's import is ~0.15 s: only here

    repo = hub_cache() / repo_folder_name(repo_id=t.repo, repo_type="model")
    try:
        commit = ref_commit(repo, rev, str(repo))
    except ReadError:  # an unreadable ref: as if there were no copy
        return None
    snapshot = inside(repo / "snapshots", commit, f"{repo}/refs/{rev}") if commit else None
    if snapshot is None or not snapshot.is_dir():
        return None
    local = snapshot / t.path if t.path else snapshot  # t.path: a plain relative path (parse_target)
    if not os.path.exists(local):
        return None
    ck = load_local(str(local))
    folder = local if local.is_dir() else local.parent
    listing = {e.name: e.stat().st_size for e in entries(folder, str(folder)) if e.is_file()}
    origin = {
        "endpoint": t.endpoint,
        "repo": t.repo,
        "revision": rev,
        "sha": commit,
        "path": t.path,
        "cached": False,
        "requests": 0,
        "bytes_received": 0,
        "listing": MappingProxyType(listing),
        "listed": True,
        "local_copy": str(local),
    }
    return replace(ck, target=target, origin=MappingProxyType(origin))
