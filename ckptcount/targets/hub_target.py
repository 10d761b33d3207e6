"""What a Hub target names: repo, revision, a path inside it, and the endpoint; the environment a Hub audit reads
(``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, huggingface_hub's cache folder); and the rule that a path from the target or an
index is a plain relative path inside the repo.

Targets: ``org/name`` (optionally ``org/name@revision``), ``hf://org/name[@revision][/sub/folder]``, and
``https://<endpoint>/org/name/resolve/<revision>/<path>`` (also ``/blob/`` and ``/tree/``). The endpoint is
``HF_ENDPOINT`` (read when the audit runs), or the host of a URL that is not huggingface.co.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import TargetNotFound, UnsafePath
from ..formats.base import format_of, is_index

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_HOSTS = frozenset({"huggingface.co", "hf.co", "www.huggingface.co"})
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = re.compile(rf"^({_NAME}/{_NAME})(?:@([^\s/]+))?$")
SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubTarget:
    repo: str
    revision: str | None
    path: str  # a subfolder or a file inside the repo; "" is the root
    is_file: bool
    endpoint: str


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache() -> Path:
    """huggingface_hub's cache of downloaded repos, as it finds it when the audit runs (``HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else its default): read from the environment here because huggingface_hub reads it once, at
    import."""
    for variable, under in (("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub")):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[variable]))) / under
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_hub_target(target: str) -> bool:
    """Whether ``target`` names something on the Hub (checked only after it was found not to be a local path)."""
    if target.startswith("hf://"):
        return True
    if re.match(r"^https?://", target):
        return True
    m = REPO_ID.match(target)
    if not m:
        return False
    name = m.group(1).rsplit("/", 1)[-1]
    return format_of(name) is None and not name.endswith(".json")


def names_file(path: str) -> bool:
    """Whether a path inside a repo names a file the readers know (a weight file or an index), not a folder."""
    name = path.rsplit("/", 1)[-1]
    return bool(name) and (format_of(name) is not None or is_index(name))


def parse_target(target: str, revision: str | None = None) -> HubTarget:
    """Split a Hub target into repo, revision, path. ``revision`` (--revision) must agree with one in the target."""
    rev_in = None
    ep = endpoint()
    if target.startswith("hf://"):
        rest = target[len("hf://") :].strip("/")
        if rest.startswith(("datasets/", "spaces/", "buckets/")):
            raise TargetNotFound(target, "only model repos are supported")
        if rest.startswith("models/"):
            rest = rest[len("models/") :]
        parts = rest.split("/")
        if len(parts) < 2:
            raise TargetNotFound(target, "expected hf://org/name[@revision][/path]")
        name = parts[1]
        if "@" in name:
            name, rev_in = name.split("@", 1)
            rev_in = unquote(rev_in)
        repo, path = f"{parts[0]}/{name}", "/".join(parts[2:])
    elif re.match(r"^https?://", target):
        u = urlparse(target)
        host = (u.hostname or "").lower()
        if host not in HUB_HOSTS:
            ep = f"{u.scheme}://{u.netloc}"
        parts = [unquote(p) for p in u.path.strip("/").split("/")]
        if len(parts) < 2:
            raise TargetNotFound(target, "expected https://host/org/name[/resolve/<revision>/<path>]")
        repo, path = f"{parts[0]}/{parts[1]}", ""
        if len(parts) > 2:
            if parts[2] not in ("resolve", "blob", "tree") or len(parts) < 4:
                raise TargetNotFound(target, "expected https://host/org/name/resolve/<revision>/<path>")
            rev_in, path = parts[3], "/".join(parts[4:])
    else:
        m = REPO_ID.match(target)
        if not m:
            raise TargetNotFound(target, "not a local path and not a Hub repo id (org/name)")
        repo, rev_in, path = m.group(1), m.group(2), ""
    if not re.match(rf"^{_NAME}/{_NAME}$", repo):
        raise TargetNotFound(target, f"{repo!r} is not a valid repo id")
    if rev_in and revision and rev_in != revision:
        raise TargetNotFound(target, f"names revision {rev_in!r} but --revision is {revision!r}")
    path = path.strip("/")
    check_path(path, target)
    return HubTarget(repo=repo, revision=revision or rev_in, path=path, is_file=names_file(path), endpoint=ep)


def check_path(path: str, where: str) -> None:
    """Hub paths (from the target or an index) are untrusted: plain relative paths that stay in the repo."""
    if not path:
        return
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise UnsafePath(where, f"path {path!r} is not a plain relative path inside the repo")


def folders(listing: dict, prefix: str) -> list[str]:
    """The folders right under ``prefix`` in a listing (file paths), to name them when there is nothing to count."""
    return sorted({p[len(prefix) :].split("/", 1)[0] for p in listing if p.startswith(prefix) and "/" in p[len(prefix) :]})


def join(folder: str, name: str, where: str) -> str:
    check_path(name, where)
    return f"{folder}/{name}" if folder else name
