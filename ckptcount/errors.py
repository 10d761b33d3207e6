"""The one family of exceptions the library raises, and the exit codes the CLI maps them to.

Every message is one line that says where (a file, a tensor), what is wrong, and by how much. The CLI prints
``Error: <where>: <what>`` on stderr and exits with the code of the error's class; it never prints a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID = 1  # invalid, unreadable or missing input
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_CHECK = 3  # a preflight check failed (--max-size, --fits)
EXIT_FINDINGS = 4  # --strict and a target has findings (unsafe pickle, index disagreement, tie audit...)


class CkptError(Exception):
    """Base of every error ckptcount raises on purpose. ``where`` names the file (or target); ``what`` says the rest."""

    exit_code = EXIT_INVALID
    kind = "error"
    # Set by a Hub read that ends in this error: the (requests, bytes received) it made, so that an audit that goes
    # on (a layout's plan, an adapter whose base could not be read) still totals them; and the (commit, listing) it
    # fetched, if any, so that a plan does not fetch it again.
    spent: tuple[int, int] = (0, 0)
    seen: tuple[str, dict] | None = None

    def __init__(self, where: str, what: str):
        # Paths and names come from untrusted files (index entries, directory listings): escape control characters
        # so every message stays one line (found by scripts/fuzz_campaign.py: a shard name holding a newline).
        self.where = _one_line(where) if where else where
        self.what = _one_line(what)
        super().__init__(f"{self.where}: {self.what}" if where else self.what)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


class TargetNotFound(CkptError):
    """The path does not exist, or holds nothing ckptcount can count."""

    kind = "not-found"


class NothingToCount(TargetNotFound):
    """A folder or repo holds no one checkpoint to count: no weight file, or several and no index to pick. The audit
    then looks for a layout of several models (a pipeline, a set of GGUF files) before it gives up (using the
    error's ``seen`` listing, when the Hub read fetched one)."""


class UnsafePath(CkptError):
    """A shard, index entry or symlink points outside the checkpoint directory, or at something that is not a file."""

    kind = "unsafe-path"


class HeaderError(CkptError):
    """A safetensors header breaks one of the format's rules."""

    kind = "invalid-header"


class ShardIndexError(CkptError):
    """A sharded index (``*.index.json``) cannot be read or names nothing usable."""

    kind = "invalid-index"


class ConfigError(CkptError):
    """config.json exists but is not a JSON object."""

    kind = "invalid-config"


class ReadError(CkptError):
    """The operating system refused a read (permissions, I/O error) or the file ended early."""

    kind = "read-error"


class TorchFileError(CkptError):
    """A PyTorch checkpoint (torch zip or legacy pickle stream) is malformed, hostile, or not a torch file."""

    kind = "invalid-torch-file"
