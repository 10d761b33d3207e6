"""``ckptcount diff A B``: options -> :func:`ckptcount.api.diff_targets` -> render. Nothing here compares.

Reached from ``ckptcount`` when its first argument is the word ``diff`` (:class:`ckptcount.cli.Main`); a local path
named ``diff`` is still counted as ``ckptcount ./diff`` (or ``ckptcount -- diff``).
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_OK, EXIT_USAGE, CkptError
from ..cli import _size_option  # the same size option as --max-size / --fits
from ..report.render import safe

EXIT_DIFFERS = 1


@click.command("diff", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("a")
@click.argument("b")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="A one-screen summary, or JSON with every difference.")
@click.option("--ignore", "ignore", multiple=True, type=click.Choice(["dtype", "buffers"]), help="Do not count these differences (repeatable): dtype (a bf16 conversion is expected), buffers.")
@click.option("--ignore-buffers", is_flag=True, help="The same as --ignore buffers.")
@click.option("--content", is_flag=True, help="Also compare the bytes of the tensors both hold with the same shape (reads only their spans).")
@click.option("--budget", default=None, callback=lambda c, p, v: _size_option(p, v), help="With --content: read at most this many bytes in all (default 1GiB; 64MB, 2GiB...).")
@click.option("--revision", default=None, help="Hub targets without @revision: branch, tag or commit (default: main).")
@click.option("--token", default=None, help="Hub token (default: HF_TOKEN or the stored `hf auth login` token).")
def diff_command(a: str, b: str, fmt: str, ignore: tuple[str, ...], ignore_buffers: bool, content: bool, budget: int | None, revision: str | None, token: str | None) -> None:
    """What changed from checkpoint A to checkpoint B, from their headers alone.

    A and B are any targets ckptcount counts (files, directories, sharded sets, Hub repos, org/name@revision), in any
    format, mixed (a .bin against its safetensors conversion, a GGUF against its source). Names are matched as
    stored, without a prefix one side adds (model., transformer.), or through the GGUF <-> transformers renaming;
    the output says which. Listed: tensors only in A or only in B, same name with another shape, dtype or kind,
    ties gained or lost, buffers gained or lost, and the counts side by side.

    Exit codes: 0 nothing differs in what was compared; 1 something differs; 2 an error (a target that cannot be
    read, a bad option). Header-only unless --content, which reads the tensors' bytes (at most --budget).
    """
    ignored = set(ignore) | ({"buffers"} if ignore_buffers else set())
    if budget is not None and not content:
        raise click.UsageError("--budget goes with --content")
    from ..api import diff_targets

    try:
        d = diff_targets(a, b, revision=revision, token=token, ignore=frozenset(ignored), content=content, budget=budget)
    except CkptError as e:
        click.echo(f"Error: {safe(str(e))}", err=True)
        sys.exit(EXIT_USAGE)  # 2: as diff(1) does on trouble
    from . import render as diff_render

    if fmt == "json":
        click.echo(diff_render.to_json(d))
    else:
        from ..cli import _width

        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        click.echo(diff_render.to_table(d, color=color, width=_width() if color else None))
    sys.exit(EXIT_DIFFERS if d.differs else EXIT_OK)
