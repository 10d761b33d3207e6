"""A Hub repo that is not one model (:mod:`.repo`): its plan from the repo listing and the small layout file, and each
part read as a Hub target of its own, at the commit the listing named, with range requests only."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from ..records import Checkpoint
from .hub import _Hub
from .hub_target import HubTarget, join, names_file, parse_target
from .repo import MAX_LAYOUT_JSON, Part, Plan, parse_json, plan, wanted


def hub_plan(target: str, revision: str | None, token: str | None, variant: str | None = None, seen: tuple[str, dict] | None = None) -> tuple[Plan, HubTarget, dict] | None:
    """(the plan, the target pinned to the listed commit, the combined report's origin), or None when the repo (or its folder) is one model.
    Costs the listing (none when ``seen``, the commit and listing the usual audit already fetched) and, for a
    layout, its JSON file: asked for only when the usual audit found several models' files or none (api)."""
    t = parse_target(target, revision)
    if t.is_file:
        return None
    hub = _Hub(target, t, token)
    sha, files = seen if seen is not None else hub.listing()
    prefix = f"{hub.folder}/" if hub.folder else ""
    listing = {p[len(prefix) :]: s for p, s in files.items() if p.startswith(prefix)}
    if not wanted(n for n in listing if "/" not in n):
        return None

    def read_json(name: str):
        body, _ = hub.small(prefix + name, sha, MAX_LAYOUT_JSON, missing_ok=False)
        return parse_json(body, hub.where(prefix + name))

    planned = plan(listing, read_json, target, variant)
    c = hub.client.counters if hub.client else None  # None: the listing was seen and no layout file was needed
    origin = {
        "endpoint": t.endpoint, "repo": t.repo, "revision": hub.rev, "sha": sha, "path": t.path, "cached": False,
        "requests": c.requests if c else 0, "bytes_received": c.bytes if c else 0, "listing": {n: s for n, s in listing.items() if "/" not in n}, "listed": True,
    }
    return planned, replace(t, revision=sha), origin


def load_part(t: HubTarget, part: Part, token: str | None, listing: Mapping[str, int | None]) -> Checkpoint:
    """Read one part of a planned repo: a folder or a file under the target's path, at ``t.revision`` (the commit
    the plan's ``listing``, relative to the target, was taken at). The listing is not fetched again."""
    path = join(t.path, part.path, t.repo) if part.path else t.path
    label = f"{t.repo}/{path}" if path else t.repo
    prefix = f"{t.path}/" if t.path else ""
    files = {prefix + n: s for n, s in listing.items()}
    return _Hub(label, replace(t, path=path, is_file=names_file(path)), token).run_listed(t.revision, files)
