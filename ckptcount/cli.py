"""The command line: options -> library call -> render. Nothing here counts or parses.

Exit codes: 0 every target counted; 1 a target was invalid, unreadable or missing (its error is one line on stderr,
the other targets are still reported); 2 usage error; 3 a preflight check failed; 4 ``--strict`` and findings.
With several targets the code summarises them all, in that order of precedence: 1, then 3, then 4, then 0.

``ckptcount diff A B [OPTIONS]`` compares two checkpoints (ckptcount.diff.cli; its own exit codes: 0 same, 1 differs,
2 error). It is chosen when the first argument is the word ``diff``; a local path named ``diff`` is counted as
``ckptcount ./diff`` (or ``ckptcount -- diff``).

Batch audits: ``--from-file targets.txt`` (one target per line; blank lines and ``#`` comments skipped; ``-`` is
stdin), ``--jobs N`` concurrent audits, ``--format jsonl``: one JSON object per line, written as each target finishes.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .api import audit_iter, audit_many
from .errors import EXIT_CHECK, EXIT_FINDINGS, EXIT_INVALID, EXIT_OK, EXIT_USAGE, CkptError
from .report.render import safe, to_json, to_jsonl, to_markdown, to_table


class Main(click.Command):
    """``ckptcount TARGETS...`` as always, and ``ckptcount diff A B ...`` when the first argument is the word ``diff``.

    The switch is made on the raw arguments before any parsing, so ``ckptcount TARGETS`` parses exactly as it did;
    anything else (``./diff``, ``-- diff``, ``diff`` after an option or another target) is a target."""

    def main(self, args=None, prog_name=None, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["diff"]:
            from .diff.cli import diff_command

            return diff_command.main(argv[1:], prog_name=f"{prog_name or 'ckptcount'} diff", **extra)
        return super().main(args, prog_name, **extra)


@click.command(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1, required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown", "jsonl"]), default="table", show_default=True, help="Output format (jsonl: one JSON object per target, per line, streamed as each finishes).")
@click.option("--from-file", "from_file", type=click.File("r", encoding="utf-8"), default=None, help="Read targets from this file, one per line (# comments and blank lines skipped; - for stdin), after TARGETS.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Targets audited at once (default 8).")
@click.option("--layers", is_flag=True, help="Add parameters per layer.")
@click.option("--tensors", is_flag=True, help="JSON: add every tensor with its classification.")
@click.option("--strict", is_flag=True, help="Exit 4 when any target has findings.")
@click.option("--verify-ties", is_flag=True, help="Read the embedding and head tensors and compare them by content (Pearson r, max diff, identical bytes).")
@click.option("--device", default="auto", show_default=True, help="With --verify-ties: auto (cuda if available, else cpu), cpu, or cuda[:N].")
@click.option("--revision", default=None, help="Hub targets: branch, tag or commit (default: main).")
@click.option("--token", default=None, envvar=None, help="Hub token (default: HF_TOKEN or the stored `hf auth login` token).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16", "fp8", "int4"]), default=None, help="Preflight: memory the weights need at this dtype.")
@click.option("--max-size", default=None, callback=lambda c, p, v: _size_option(p, v), help="Preflight check: exit 3 if the counted files total more (20GB, 24GiB...).")
@click.option("--fits", default=None, callback=lambda c, p, v: _size_option(p, v), help="Preflight check: exit 3 if the weights at --dtype (plus the KV cache with --context) need more memory (24GiB...).")
@click.option("--context", type=click.IntRange(1), default=None, help="Preflight: add the KV cache at this many tokens per sequence (and include it in --fits).")
@click.option("--batch", type=click.IntRange(1), default=None, help="With --context: sequences cached at once (default 1).")
@click.option("--kv-dtype", "kv_dtype", type=click.Choice(["fp8", "bf16", "fp16", "fp32"]), default=None, help="With --context: the cache's dtype (default: --dtype, else the config's dtype; GGUF: f16).")
@click.option("--variant", default=None, help="Diffusers pipelines: count this weight variant (fp16: diffusion_pytorch_model.fp16.safetensors...).")
@click.option("--base", default=None, help="PEFT adapters: the base model (a path or a Hub repo) to measure the adapter against (default for Hub adapters: the repo adapter_config.json names).")
@click.option("--file", "file", default=None, help="Count one file of each target (one GGUF of a set): a path inside the target.")
@click.version_option(__version__, prog_name="ckptcount")
def main(targets: tuple[str, ...], fmt: str, layers: bool, tensors: bool, strict: bool, verify_ties: bool, device: str, revision: str | None = None, token: str | None = None, dtype: str | None = None, max_size: int | None = None, fits: int | None = None, from_file=None, jobs: int | None = None, context: int | None = None, batch: int | None = None, kv_dtype: str | None = None, variant: str | None = None, base: str | None = None, file: str | None = None) -> None:
    """Count a checkpoint's parameters, weights, biases and tied tensors from its headers alone.

    TARGETS are checkpoint files (.safetensors, .bin/.pt/.pth/.ckpt read without executing pickle, .gguf),
    directories holding them (a Hugging Face cache snapshot, or its models--org--name folder, too), or sharded sets
    with their *.index.json. Several targets are shown side by side. Anything that is not a local path may be a Hub
    repo (org/name), an hf://org/name/sub/folder path or an https://.../resolve/<revision>/<file> URL: only headers
    are read, with HTTP range requests (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured; offline or with the Hub
    unreachable, a copy huggingface_hub downloaded is read instead).

    ckptcount diff A B compares two checkpoints (ckptcount diff --help); a local path named diff: ckptcount ./diff.
    """
    options = {"revision": revision, "token": token, "dtype": dtype, "max_size": max_size, "fits": fits, "variant": variant, "base": base, "file": file}
    options = {k: v for k, v in options.items() if v is not None}
    if context is None and (batch is not None or kv_dtype is not None):
        raise click.UsageError("--batch and --kv-dtype size the KV cache: give --context too")
    if context is not None:
        options.update(context=context, batch=batch or 1, kv_dtype=kv_dtype)
    if not targets and from_file is None:
        raise click.UsageError("give TARGETS, or --from-file with one target per line")
    if targets[:1] == ("diff",) and not os.path.exists("diff"):
        raise click.UsageError("diff compares two checkpoints when it comes first: ckptcount diff A B [OPTIONS]")
    listed = _targets(targets, from_file)
    if fmt == "jsonl":
        sys.exit(_stream(listed, options, jobs=jobs or 8, tensors=tensors, layers=layers, strict=strict, verify_ties=verify_ties, device=device, token=token))
    listed = list(listed)
    if not listed:
        raise click.UsageError("--from-file names no targets")
    results = audit_many(listed, jobs=jobs, **options)
    if verify_ties:
        results = _verify(results, device, token)
    for r in results:
        if isinstance(r, CkptError):
            click.echo(f"Error: {safe(str(r))}", err=True)
    for line in _check_lines(results):
        click.echo(line, err=True)
    if fmt == "json":
        click.echo(to_json(results, tensors=tensors, layers=layers))
    elif fmt == "markdown":
        text = to_markdown(results, layers=layers)
        if text:
            click.echo(text)
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        text = to_table(results, layers=layers, color=color, width=_width() if color else None)
        if text:
            click.echo(text)
    sys.exit(exit_code(results, strict=strict))


def run() -> None:
    """The ``ckptcount`` command and ``python -m ckptcount``: :func:`main`, then end the process without teardown.

    A 90,000-tensor audit leaves about a million small objects. Freeing them one by one, then the interpreter's own
    final collection, took ~0.08 s of a ~1.1 s run (docs/robustness.md), for memory the OS takes back at once. So
    once main has exited (with its code, or click's for --help, --version and usage errors) the output streams are
    flushed and the process ends with ``os._exit``. Any other exception leaves normally, with its traceback.
    Programs and tests that call :func:`main` in-process are unaffected."""
    try:
        main()
    except SystemExit as e:
        code = e.code
    else:
        code = EXIT_OK
    if code is None:
        code = EXIT_OK
    elif not isinstance(code, int):  # sys.exit("message"), as the interpreter would handle it
        print(code, file=sys.stderr)
        code = EXIT_INVALID
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): 120, the code Python gives when that flush fails
            code = code or 120
    os._exit(code)


def _targets(targets: tuple[str, ...], from_file):
    """TARGETS, then the lines of --from-file (stripped; blank lines and # comments skipped), read lazily."""
    yield from targets
    if from_file is not None:
        for line in from_file:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def _stream(targets, options: dict, *, jobs: int, tensors: bool, layers: bool, strict: bool, verify_ties: bool, device: str, token: str | None) -> int:
    """--format jsonl: one line per target as it finishes (``position`` is its place in the list); errors also go to
    stderr as for the other formats. Nothing is kept per target, so the list can be as long as a registry. Returns the
    exit code summarising every target, and says on stderr how many were counted, failed, had findings."""
    engine = None
    if verify_ties:
        from .verify.run import VerifyError, resolve, verify_results

        try:
            engine = resolve(device)
        except VerifyError as e:
            click.echo(f"Error: {safe(str(e))}", err=True)
            return EXIT_USAGE
    codes: set[int] = set()
    total = failed = with_findings = 0
    for position, _, r in audit_iter(targets, jobs=jobs, **options):
        if engine is not None and not isinstance(r, CkptError):
            r = verify_results([r], engine=engine, token=token)[0]
        total += 1
        if isinstance(r, CkptError):
            failed += 1
            click.echo(f"Error: {safe(str(r))}", err=True)
        elif r.checkpoint.findings:
            with_findings += 1
        for line in _check_lines([r]):
            click.echo(line, err=True)
        click.echo(to_jsonl(r, position=position, tensors=tensors, layers=layers))
        sys.stdout.flush()
        codes.add(exit_code([r], strict=strict))
    click.echo(f"ckptcount: {total} targets: {total - failed} counted, {failed} failed, {with_findings} with findings", err=True)
    if total == 0:
        return EXIT_USAGE
    for code in (EXIT_INVALID, EXIT_CHECK, EXIT_FINDINGS):
        if code in codes:
            return code
    return EXIT_OK


def _verify(results: list, device: str, token: str | None = None) -> list:
    """--verify-ties: content checks of the embedding/head pair and each tie (ckptcount.verify.run); progress on stderr."""
    from .verify.run import StderrProgress, VerifyError, resolve, verify_results

    try:
        engine = resolve(device)
    except VerifyError as e:
        click.echo(f"Error: {safe(str(e))}", err=True)
        sys.exit(EXIT_USAGE)
    if getattr(engine, "torch_missing", False):
        click.echo("ckptcount: torch is not installed: verifying with numpy on the CPU (pip install 'ckptcount[torch]'; a CUDA build of torch for the GPU)", err=True)
    progress = StderrProgress() if sys.stderr.isatty() else None
    return verify_results(results, engine=engine, progress=progress, token=token)


def exit_code(results: list, *, strict: bool) -> int:
    """1 if any target failed; else 3 if a preflight check failed; else 4 if --strict and any target has findings;
    else 0."""
    if any(isinstance(r, CkptError) for r in results):
        return EXIT_INVALID
    if any(getattr(r, "preflight", None) is not None and r.preflight.failed for r in results):
        return EXIT_CHECK  # 3: --max-size / --fits
    if strict and any(r.checkpoint.findings for r in results):
        return EXIT_FINDINGS
    return EXIT_OK


def _size_option(param, value: str | None) -> int | None:
    if value is None:
        return None
    from .analysis.preflight import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


def _check_lines(results: list) -> list[str]:
    """One stderr line per failed preflight check."""
    out = []
    for r in results:
        pf = getattr(r, "preflight", None)
        for c in pf.failed if pf is not None else ():
            out.append(f"Check failed: {safe(r.checkpoint.target)}: {c.message()}")
    return out


def _width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 200
