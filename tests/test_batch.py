"""Batch audits: --from-file, --format jsonl (one object per line, streamed as each target finishes), --jobs, and the
exit code that summarises every target. Expected counts come from /work/shared/FACTS.md (transformers on the meta
device); the hostile targets from tests/hostile (their messages are pinned in its manifest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount import api
from ckptcount.cli import main

from hubserver import HubServer, load_dir

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
HOSTILE = ROOT / "tests" / "hostile"
PARAMS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}  # FACTS.md
BAD = "Error: header-len-2pow63.safetensors: header length 9223372036854775808 exceeds the 100000000-byte cap"


@pytest.fixture
def batch(tmp_path, monkeypatch):
    """A working folder with the four GPT-2 fixtures, a hostile file and a pickle with an unsafe global."""
    for name in PARAMS:
        shutil.copytree(FIXTURES / name, tmp_path / name)
    for name in ("header-len-2pow63.safetensors", "pickle-rce.pt"):
        shutil.copy(HOSTILE / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _lines(stdout: str) -> list[dict]:
    out = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(o, dict) and o["schema_version"] == 3 for o in out)
    return out


def test_jsonl_one_object_per_target_and_a_failing_target_does_not_stop_the_others(batch):
    (batch / "targets.txt").write_text("# every GPT-2, one broken file in the middle\ngpt2\n\ngpt2-medium\nheader-len-2pow63.safetensors\n  gpt2-large  \ngpt2-xl\n")
    r = CliRunner().invoke(main, ["--from-file", "targets.txt", "--format", "jsonl", "--jobs", "3"])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [BAD, "ckptcount: 5 targets: 4 counted, 1 failed, 0 with findings"]
    objs = _lines(r.stdout)
    assert sorted(o["position"] for o in objs) == [0, 1, 2, 3, 4]
    by = {o["target"]: o for o in objs}
    for name, params in PARAMS.items():
        assert by[name]["parameters"] == params
    assert by["header-len-2pow63.safetensors"] == {
        "schema_version": 3, "position": 2, "target": "header-len-2pow63.safetensors", "error": BAD[len("Error: "):], "error_kind": "invalid-header",
    }


def test_jsonl_objects_are_the_json_report_objects(batch):
    targets = ["gpt2", "pickle-rce.pt", "header-len-2pow63.safetensors"]
    runner = CliRunner()
    whole = json.loads(runner.invoke(main, [*targets, "--format", "json", "--layers"]).stdout)["targets"]
    lines = sorted(_lines(runner.invoke(main, [*targets, "--format", "jsonl", "--layers"]).stdout), key=lambda o: o["position"])
    for one, line in zip(whole, lines):
        line.pop("schema_version"), line.pop("position")
        assert line == one


def test_from_stdin_and_positional_targets_come_first(batch):
    r = CliRunner().invoke(main, ["gpt2-xl", "--from-file", "-", "--format", "jsonl", "--jobs", "1"], input="gpt2\n# comment\n")
    assert r.exit_code == 0
    objs = _lines(r.stdout)
    assert [(o["position"], o["target"], o["parameters"]) for o in objs] == [(0, "gpt2-xl", PARAMS["gpt2-xl"]), (1, "gpt2", PARAMS["gpt2"])]
    assert r.stderr == "ckptcount: 2 targets: 2 counted, 0 failed, 0 with findings\n"


def test_from_file_with_table_and_json(batch):
    (batch / "t.txt").write_text("gpt2\ngpt2-medium\n")
    r = CliRunner().invoke(main, ["--from-file", "t.txt"])
    assert r.exit_code == 0 and "124,439,808" in r.stdout and "354,823,168" in r.stdout
    r = CliRunner().invoke(main, ["--from-file", "t.txt", "--format", "json", "--jobs", "1"])
    assert [t["parameters"] for t in json.loads(r.stdout)["targets"]] == [PARAMS["gpt2"], PARAMS["gpt2-medium"]]


@pytest.mark.parametrize(
    "targets, extra, code",
    [
        (["gpt2", "gpt2-xl"], [], 0),
        (["gpt2", "pickle-rce.pt"], [], 0),  # findings without --strict
        (["gpt2", "pickle-rce.pt"], ["--strict"], 4),
        (["gpt2", "pickle-rce.pt"], ["--strict", "--max-size", "20kB"], 4),  # 14,347 and 297 bytes: both within 20 kB
        (["gpt2-xl", "pickle-rce.pt"], ["--strict", "--max-size", "20kB"], 3),  # the gpt2-xl fixture is 58,570 bytes
        (["gpt2", "header-len-2pow63.safetensors", "pickle-rce.pt"], ["--strict", "--max-size", "1kB"], 1),
    ],
)
def test_exit_code_summarises_every_target(batch, targets, extra, code):
    """Precedence 1 (a target failed) > 3 (a preflight check failed) > 4 (--strict and findings) > 0, in every format."""
    for fmt in ("jsonl", "json", "table"):
        r = CliRunner().invoke(main, [*targets, "--format", fmt, *extra])
        assert r.exit_code == code, (fmt, r.stderr)


def test_usage_errors(batch):
    (batch / "empty.txt").write_text("# nothing\n\n")
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 2 and "give TARGETS, or --from-file" in r.stderr
    for fmt in ("jsonl", "table"):
        r = CliRunner().invoke(main, ["--from-file", "empty.txt", "--format", fmt])
        assert r.exit_code == 2, fmt
    assert CliRunner().invoke(main, ["gpt2", "--jobs", "0"]).exit_code == 2
    assert CliRunner().invoke(main, ["--from-file", "missing.txt"]).exit_code == 2


def test_audit_iter_bounds_concurrency_and_reads_the_list_lazily(monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()

    def fake_audit(target, **options):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        if target == "t7":
            raise api.CkptError(target, "broken")
        return target.upper()

    monkeypatch.setattr(api, "audit", fake_audit)
    taken = []

    def source():
        for i in range(40):
            taken.append(i)
            yield f"t{i}"

    it = api.audit_iter(source(), jobs=3)
    first = next(it)
    assert len(taken) <= 2 * 3 + 1  # read ahead at most 2 x jobs (+1 pulled to refill)
    rest = list(it)
    got = {p: r for p, _, r in [first, *rest]}
    assert sorted(got) == list(range(40))
    assert peak[0] == 3
    assert isinstance(got[7], api.CkptError) and got[8] == "T8"


def test_jsonl_lines_stream_as_targets_finish(tmp_path):
    """A real process against the local Hub: the fast repo's line is out long before the slow repo finishes."""
    server = HubServer()
    try:
        server.add("org/fast", load_dir(FIXTURES / "gpt2"))
        server.add("org/slow", load_dir(FIXTURES / "gpt2-medium"))
        server.fault(r"^/api/models/org/slow/", "sleep", times=1, seconds=3.0)
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ckptcount")), "org/slow", "org/fast", "--format", "jsonl"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        first = json.loads(proc.stdout.readline())
        t_first = time.monotonic()
        second = json.loads(proc.stdout.readline())
        t_second = time.monotonic()
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        server.close()
    assert (first["target"], first["position"], first["parameters"]) == ("org/fast", 1, PARAMS["gpt2"])
    assert (second["target"], second["position"], second["parameters"]) == ("org/slow", 0, PARAMS["gpt2-medium"])
    assert t_second - t_first > 2.0
