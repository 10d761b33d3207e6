"""``python -m ckptcount``: the same as the ``ckptcount`` command."""

from .cli import run

run()
