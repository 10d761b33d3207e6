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

    def __init__(self, where: str, what: str):
        self.where = where
        self.what = what
        super().__init__(f"{where}: {what}" if where else what)


class TargetNotFound(CkptError):
    """The path does not exist, or holds nothing ckptcount can count."""

    kind = "not-found"


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
