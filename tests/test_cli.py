"""The CLI through click's CliRunner: stdout and stderr checked separately, exit codes as documented."""

from __future__ import annotations

import json
import struct

from click.testing import CliRunner

from ckptcount.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_table_for_gpt2_xl(fixtures_dir):
    r = run(fixtures_dir / "gpt2-xl")
    assert r.exit_code == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["gpt2-xl"]
    row = {ln.split("  ")[0].strip(): ln.split("  ")[-1].strip() for ln in lines[1:] if "  " in ln.strip()}
    assert row["parameters"] == "1,557,611,200"
    assert row["biases"] == "846,400 (0.054%) in 289 tensors"
    assert row["if tied tensors were untied"] == "1,638,022,400"
    assert "\x1b" not in r.stdout  # no colour when not a terminal
    assert "gpt2-xl: tie wte.weight = lm_head.weight: config: tie_word_embeddings absent" in r.stdout


def test_side_by_side(fixtures_dir):
    r = run(*(fixtures_dir / n for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")))
    assert r.exit_code == 0
    header = r.stdout.splitlines()[0].split()
    assert header == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
    params = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("parameters")).split()[1:]
    assert params == ["124,439,808", "354,823,168", "774,030,080", "1,557,611,200"]


def test_json_contract(fixtures_dir):
    r = run(fixtures_dir / "gpt2", "--format", "json", "--tensors", "--layers")
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.lstrip().startswith('{\n  "schema_version": 3')
    doc = json.loads(r.stdout)
    (t,) = doc["targets"]
    for key in ("target", "files", "parameters", "stored_elements", "buffer_elements", "weights", "biases", "by_component", "by_dtype", "ties"):
        assert key in t
    assert t["parameters"] == 124_439_808 and t["stored_elements"] == 137_022_720
    assert t["weights"] == {"tensors": 75, "elements": 124_337_664, "percent": 99.918}
    assert t["biases"] == {"tensors": 73, "elements": 102_144, "percent": 0.082}
    assert t["ties"] == [{"names": ["wte.weight", "lm_head.weight"], "stored": ["wte.weight"],
                          "evidence": "config: tie_word_embeddings absent (transformers default: true); output head not stored",
                          "counted_once": True}]
    assert t["by_dtype"] == {"F32": {"tensors": 160, "elements": 137_022_720, "bytes": 548_090_880}}
    assert len(t["tensors"]) == 160 and len(t["by_layer"]) == 12
    mask = next(x for x in t["tensors"] if x["name"] == "h.0.attn.bias")
    assert mask["kind"] == "buffer" and mask["reason"] == "causal mask" and mask["layer"] == "0"


def test_one_bad_target_does_not_stop_the_others(fixtures_dir, tmp_path):
    bad = tmp_path / "model-00002-of-00004.safetensors"
    header = b'{"x":{"dtype":"F32","shape":[1024],"data_offsets":[0,4094]}}'
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4094)
    r = run(fixtures_dir / "gpt2", bad, "--format", "json")
    assert r.exit_code == 1
    assert r.stderr == f"Error: {bad}: tensor 'x' declares 4096 bytes but its offsets span 4094\n"
    doc = json.loads(r.stdout)
    assert doc["targets"][0]["parameters"] == 124_439_808
    assert doc["targets"][1] == {"target": str(bad), "error": f"{bad}: tensor 'x' declares 4096 bytes but its offsets span 4094", "error_kind": "invalid-header"}
    table = run(fixtures_dir / "gpt2", bad)
    assert table.exit_code == 1 and "124,439,808" in table.stdout and "Traceback" not in table.output


def test_missing_target_and_usage(tmp_path):
    r = run(tmp_path / "nope")
    assert r.exit_code == 1 and r.stdout == "" and r.stderr == f"Error: {tmp_path / 'nope'}: no such file or directory\n"
    assert run().exit_code == 2
    assert run(tmp_path, "--format", "xml").exit_code == 2


def test_untrusted_names_are_printed_not_interpreted(tmp_path):
    name = "[bold red]evil[/] \x1b[31m\u202e"
    header = json.dumps({name: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    r = run(tmp_path, "--format", "json", "--tensors")
    assert json.loads(r.stdout)["targets"][0]["tensors"][0]["name"] == name
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    md = run(tmp_path / "m.safetensors", "--format", "markdown")
    assert md.exit_code == 0


def test_markdown(fixtures_dir):
    r = run(fixtures_dir / "gpt2", fixtures_dir / "gpt2-medium", "--format", "markdown")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "| | gpt2 | gpt2-medium |" and lines[1] == "|---|---:|---:|"
    assert "| parameters | 124,439,808 | 354,823,168 |" in lines


def test_strict_exit_code_on_findings(tmp_path):
    shard = tmp_path / "model-00001-of-00002.safetensors"
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    shard.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(shard.read_bytes())
    assert run(tmp_path).exit_code == 0
    r = run(tmp_path, "--strict")
    assert r.exit_code == 4 and "no-index" in r.stdout


def test_table_escapes_markup_and_control_characters_in_names(tmp_path):
    evil = "[bold red]lm_head.weight[/]\x1b[2J\u202e"
    header = json.dumps({"__metadata__": {evil: "wte.weight"},
                         "wte.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 32)
    r = run(tmp_path)
    assert r.exit_code == 0
    assert "[bold red]lm_head.weight[/]\\x1b[2J\\u202e" in r.stdout
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout


def test_the_command_as_a_process_exits_with_the_documented_codes(fixtures_dir, tmp_path):
    """`ckptcount` and `python -m ckptcount` go through cli.run, which ends the process with os._exit after main:
    the whole output still arrives, and each exit code is main's (or click's)."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("ckptcount"))

    def proc(*args, command=(exe,)):
        return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=tmp_path)

    r = proc(fixtures_dir / "gpt2", "--format", "json", "--tensors", "--layers")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout)["targets"][0]["parameters"] == 124_439_808 and r.stdout == run(fixtures_dir / "gpt2", "--format", "json", "--tensors", "--layers").stdout
    r = proc(fixtures_dir / "gpt2", command=(sys.executable, "-m", "ckptcount"))
    assert r.returncode == 0 and "124,439,808" in r.stdout
    r = proc(tmp_path / "missing.safetensors")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    r = proc(fixtures_dir / "gpt2", "--fits", "1KiB")
    assert r.returncode == 3 and r.stderr.startswith("Check failed: ")
    assert proc("--version").returncode == 0 and proc("--version").stdout.startswith("ckptcount")
    r = proc("--no-such-option")
    assert r.returncode == 2 and "No such option" in r.stderr


def test_the_command_into_a_closed_pipe_ends_quietly(fixtures_dir):
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.Popen([str(Path(sys.executable).with_name("ckptcount")), str(fixtures_dir / "gpt2")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader went away (`| head` that has read enough)
    err = p.stderr.read().decode()
    assert p.wait() in (0, 1, 120) and "Traceback" not in err, err
