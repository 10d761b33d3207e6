"""Repos that hold several models or an adapter (issue 18): diffusers pipelines, sentence-transformers modules, PEFT
adapters, sets of GGUF files. Tiny real layouts written by the libraries' own save functions (tests/repo_layouts.py),
counted locally and over the test Hub server, against the instantiated modules and peft's own counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount import audit
from ckptcount.cli import main
from ckptcount.errors import UnsafePath
from ckptcount.targets.repo import pick_weights, plan

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every layout, built once: {name: (folder, oracle)}."""
    import repo_layouts as L

    root = tmp_path_factory.mktemp("repos")
    out = {}
    if _has("diffusers"):
        out["sd"] = (root / "sd-tiny", L.diffusers_pipeline(root / "sd-tiny"))
    if _has("sentence_transformers"):
        out["st"] = (root / "st-model", L.sentence_transformer(root / "st-model"))
        out["st-sharded"] = (root / "st-sharded", L.sentence_transformer(root / "st-sharded", max_shard_size="5KB"))
    if _has("peft"):
        out["lora"] = (root / "lora", L.peft_adapter(root / "lora", root / "base", dora=True, modules_to_save=["lm_head"]))
        out["base"] = (root / "base", None)
        L.tiny_llama(root / "other-base", hidden=48)  # a base the adapter does not fit
        out["other-base"] = (root / "other-base", None)
        merged = root / "lora-beside-model"  # the adapter pushed together with a full model's files
        shutil.copytree(root / "lora", merged)
        for f in (root / "base").iterdir():
            shutil.copy(f, merged / f.name)
        out["lora-beside-model"] = (merged, out["lora"][1])
        out["ia3"] = (root / "ia3", L.peft_adapter(root / "ia3", root / "ia3-base", "ia3"))
        out["loha"] = (root / "loha", L.peft_adapter(root / "loha", root / "loha-base", "loha"))
    if _has("gguf"):
        out["gguf"] = (root / "quants", L.gguf_set(root / "quants"))
        out["gguf-mixed"] = (root / "mixed", L.gguf_set(root / "mixed", ("a-Q8_0.gguf", "b-Q8_0.gguf"), tied=(True, False)))
        out["gguf-f32"] = (root / "f32", L.gguf_f32_set(root / "f32"))
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _need(made, key: str):
    if key not in made:
        pytest.skip(f"{key}: its library is not installed")
    return made[key]


@pytest.fixture(params=["local", "plain-server", "hub-server"])
def where(request, made, monkeypatch, tmp_path):
    """How a layout is reached: its folder, or the test Hub server over real HTTP in both its modes (plain, and the
    one that behaves as the real Hub and its CDN do), set up as conftest's stand_in_hub sets it up."""
    if request.param == "local":
        return lambda key: str(made[key][0])
    from hubserver import HubServer, load_dir

    from ckptcount.sources import http as http_source

    server = HubServer(mode=request.param.split("-")[0])
    request.addfinalizer(server.close)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CKPTCOUNT_CACHE", raising=False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(http_source, "BASE_WAIT", 0.01)

    def on_hub(key: str) -> str:
        folder = made[key][0]
        server.add(f"test/{folder.name}", load_dir(folder))
        if key == "lora":
            server.add("test/tiny-llama", load_dir(made["base"][0]))
        return f"test/{folder.name}"

    on_hub.server = server
    return on_hub


def _components(report) -> dict[str, int]:
    return {c.name: c.report.counts.parameters for c in report.layout.components}


# ------------------------------------------------------------------------------------------------ diffusers


def test_pipeline_counts_each_component_like_the_instantiated_modules(made, where):
    _need(made, "sd")
    folder, oracle = made["sd"]
    report = audit(where("sd"))
    assert report.layout.kind == "diffusers-pipeline" and report.layout.pipeline_class == "StableDiffusionPipeline"
    assert _components(report) == oracle["components"]
    assert report.counts.parameters == oracle["total"] == sum(oracle["components"].values())
    not_counted = dict(report.layout.not_counted)
    assert {"scheduler", "tokenizer"} <= set(not_counted) and "PNDMScheduler" in not_counted["scheduler"]
    # the fp16 files are listed with their sizes, never added in
    fp16 = {c: (n, b) for c, v, n, b in report.layout.variants if v == "fp16"}
    assert set(fp16) == set(oracle["components"])
    assert fp16["unet"] == (1, (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").stat().st_size)
    assert all(c.report.checkpoint.files[0].path.endswith(("diffusion_pytorch_model.safetensors", "model.safetensors")) for c in report.layout.components)
    if hasattr(where, "server"):  # range requests only (these files are smaller than one first block: read whole)
        weights = [r for r in where.server.requests() if r.path.endswith(".safetensors")]
        assert len({r.path.rsplit("/", 2)[-2] for r in weights if r.status == 206}) == 3 and all(r.range for r in weights)


def test_pipeline_components_match_their_saved_configs_built_on_the_meta_device(made):
    """A second oracle, from the saved folder alone: each component's class (as model_index.json names it) built from
    its own saved config on the meta device, where nothing is allocated."""
    import importlib

    import torch

    _need(made, "sd")
    folder, _ = made["sd"]
    index = json.loads((folder / "model_index.json").read_text())
    expected = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] not in ("diffusers", "transformers"):
            continue
        cls = getattr(importlib.import_module(entry[0]), entry[1])
        if not hasattr(cls, "parameters"):
            continue  # a scheduler or tokenizer
        with torch.device("meta"):
            if entry[0] == "diffusers":
                module = cls.from_config(cls.load_config(folder / name))
            else:
                from transformers import AutoConfig

                module = cls._from_config(AutoConfig.from_pretrained(folder / name))
        expected[name] = sum(p.numel() for p in module.parameters())
    assert set(expected) == {"unet", "vae", "text_encoder"}
    assert _components(audit(str(folder))) == expected


def test_variant_picks_the_fp16_files(made, where):
    _need(made, "sd")
    _, oracle = made["sd"]
    report = audit(where("sd"), variant="fp16")
    assert _components(report) == oracle["components"] and report.layout.variant == "fp16"
    assert set(report.counts.by_dtype) == {"F16"}
    assert {c for c, v, _, _ in report.layout.variants if v == "plain"} == set(oracle["components"])
    missing = audit(where("sd"), variant="bf16")
    assert [f.kind for f in missing.checkpoint.findings].count("variant-missing") == 3
    assert set(missing.counts.by_dtype) == {"F32"}


def test_pipeline_json_and_table(made):
    _need(made, "sd")
    folder, oracle = made["sd"]
    r = CliRunner().invoke(main, [str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 3
    (t,) = doc["targets"]
    assert t["parameters"] == oracle["total"] and t["layout"]["kind"] == "diffusers-pipeline"
    assert {c["component"]: c["parameters"] for c in t["components"]} == oracle["components"]
    assert all(c["role"] == "pipeline-component" and c["library"] in ("diffusers", "transformers") for c in t["components"])
    assert {n["name"] for n in t["layout"]["not_counted"]} >= {"scheduler", "tokenizer"}
    assert {f["path"] for f in t["files"]} == {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    table = CliRunner().invoke(main, [str(folder)]).stdout
    header = table.splitlines()[0]
    assert all(label in header for label in ("sd-tiny (total)", "sd-tiny/unet", "sd-tiny/vae", "sd-tiny/text_encoder"))
    assert f"{oracle['total']:,}" in table and "not counted: scheduler" in table and "--variant" in table


def test_the_bundled_pipeline_fixture_is_the_libraries_pipeline(made):
    """fixtures/sd-tiny (scripts/make_layout_fixtures.py: the same pipeline, each file cut to its header) counts as
    the instantiated modules do."""
    _need(made, "sd")
    _, oracle = made["sd"]
    report = audit(str(Path(__file__).resolve().parent.parent / "fixtures" / "sd-tiny"))
    assert _components(report) == oracle["components"] and all(f.header_only for f in report.checkpoint.files)


def test_component_folder_that_leaves_the_pipeline_is_refused(made, tmp_path):
    _need(made, "sd")
    folder = tmp_path / "sd"
    shutil.copytree(made["sd"][0], folder)
    outside = tmp_path / "elsewhere"
    shutil.move(folder / "vae", outside)
    (folder / "vae").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath):
        audit(str(folder))


# ------------------------------------------------------------------------------------------------ sentence-transformers


def test_sentence_transformers_counts_every_module_with_weights(made, where):
    _need(made, "st")
    _, oracle = made["st"]
    report = audit(where("st"))
    assert report.layout.kind == "sentence-transformers"
    assert _components(report) == oracle["modules"]
    assert report.counts.parameters == oracle["total"] == sum(oracle["modules"].values())
    assert [n for n, _ in report.layout.not_counted] == oracle["non_weight"]
    assert {f.path for f in report.checkpoint.files} == {"model.safetensors", "2_Dense/model.safetensors"}


def test_sentence_transformers_with_a_sharded_root_module_is_not_cut_to_it(made, where):
    """A sharded root is read from its index without the repo listing (docs/hub.md): the modules.json probe made
    beside the shard headers is what tells the audit to plan the modules, so 2_Dense is counted, first time and from
    the header cache."""
    folder, oracle = _need(made, "st-sharded")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    target = where("st-sharded")
    for _ in range(2):
        report = audit(target)
        assert report.layout is not None and report.layout.kind == "sentence-transformers"
        assert _components(report) == oracle["modules"]
        assert report.counts.parameters == oracle["total"]
    if hasattr(where, "server"):
        assert where.server.requests("hub", "/modules.json$")


# ------------------------------------------------------------------------------------------------ PEFT adapters


def test_lora_adapter_settings_and_count_without_its_base(made):
    _need(made, "lora")
    folder, oracle = made["lora"]
    report = audit(str(folder))
    a = report.layout.adapter
    assert report.counts.parameters == a["parameters"] == oracle["trainable"]
    assert (a["type"], a["rank"], a["alpha"], a["dora"]) == ("LORA", 8, 16, True)
    assert a["target_modules"] == ["q_proj", "v_proj"] and a["modules_to_save"] == ["lm_head"]
    assert a["base_model"] == "test/tiny-llama" and a["base"]["read"] is False
    assert a["adapted_modules"] == 4  # q_proj and v_proj in 2 layers
    roles = a["tensors_by_role"]
    assert set(roles) == {"lora_A", "lora_B", "lora_magnitude_vector", "modules_to_save"}
    assert roles["modules_to_save"]["elements"] == 128 * 32  # the trained copy of lm_head


def test_an_adapter_beside_a_full_model_counts_the_adapter_and_says_the_model(made, where):
    """adapter_model.safetensors next to model.safetensors: the adapter's numbers are the adapter file's (peft's count),
    never the model's, and the model's weights are a one-line finding naming --file."""
    folder, oracle = _need(made, "lora-beside-model")
    assert (folder / "model.safetensors").exists()
    target = where("lora-beside-model")
    report = audit(target)
    assert report.layout.kind == "peft-adapter" and report.checkpoint.target == target
    assert report.counts.parameters == report.layout.adapter["parameters"] == oracle["trainable"]
    assert report.layout.adapter["adapted_modules"] == 4
    assert [f.path for f in report.checkpoint.files] == ["adapter_model.safetensors"]
    noted = [f.message for f in report.checkpoint.findings if f.kind == "not-counted"]
    assert noted == ["model.safetensors: a model's weights beside the adapter, not counted (--file model.safetensors counts them)"]
    model = audit(target, file="model.safetensors")
    assert model.layout is None and model.counts.parameters == oracle["base"]


def test_lora_against_its_base_share_and_shape_check(made, where):
    _need(made, "lora")
    _, oracle = made["lora"]
    base = None if hasattr(where, "server") else str(made["base"][0])
    report = audit(where("lora"), base=base)  # on the Hub: the base its config names, read by headers
    b = report.layout.adapter["base"]
    assert b["parameters"] == oracle["base"] == oracle["total"] - oracle["trainable"]
    assert b["share_percent"] == round(100 * oracle["trainable"] / oracle["base"], 4)
    assert b["mismatches"] == 0 and not [f for f in report.checkpoint.findings if f.kind == "adapter-base-mismatch"]


def test_adapter_that_does_not_fit_the_base_is_a_finding(made):
    _need(made, "lora")
    folder = made["lora"][0]
    report = audit(str(folder), base=str(made["other-base"][0]))
    bad = [f for f in report.checkpoint.findings if f.kind == "adapter-base-mismatch"]
    assert len(bad) == 5 and "q_proj" in bad[0].message  # 4 adapted projections and the lm_head copy
    r = CliRunner().invoke(main, [str(folder), "--base", str(made["other-base"][0]), "--strict"])
    assert r.exit_code == 4 and "adapter-base-mismatch" in r.stdout
    assert CliRunner().invoke(main, [str(folder), "--base", str(made["base"][0]), "--strict"]).exit_code == 0


@pytest.mark.parametrize("kind, role", [("ia3", "ia3_l"), ("loha", "hada_w1_a")])
def test_other_peft_types_are_counted_by_their_tensors(made, kind, role):
    _need(made, kind)
    folder, oracle = made[kind]
    report = audit(str(folder), base=str(folder.parent / f"{kind}-base"))
    a = report.layout.adapter
    assert a["type"] == kind.upper() and report.counts.parameters == oracle["trainable"]
    assert role in a["tensors_by_role"] and a["base"]["mismatches"] == 0


# ------------------------------------------------------------------------------------------------ GGUF sets


def test_gguf_set_lists_every_file_never_summed(made, where):
    _need(made, "gguf")
    _, oracle = made["gguf"]
    report = audit(where("gguf"))
    assert report.layout.kind == "gguf-set" and report.layout.alternatives
    assert _components(report) == {n: o["parameters"] for n, o in oracle.items()}
    assert report.counts.parameters == next(iter(oracle.values()))["parameters"]  # one model, not the sum
    sizes = {c.name: sum(f.size for f in c.report.checkpoint.files) for c in report.layout.components}
    assert sizes == {n: o["bytes"] for n, o in oracle.items()}
    one = audit(where("gguf"), file="tiny-Q8_0.gguf")
    assert one.layout is None and one.counts.parameters == oracle["tiny-Q8_0.gguf"]["parameters"]
    if hasattr(where, "server"):  # headers only: a small part of each file
        got = sum(r.sent for r in where.server.requests() if r.path.endswith(".gguf"))
        assert got < sum(o["bytes"] for o in oracle.values()) / 2


def test_gguf_set_of_different_models_has_no_common_count(made):
    _need(made, "gguf-mixed")
    folder, oracle = made["gguf-mixed"]
    r = CliRunner().invoke(main, [str(folder), "--format", "json"])
    (t,) = json.loads(r.stdout)["targets"]
    assert t["parameters"] is None and set(t) == {"target", "format", "files", "config", "parameters", "findings", "layout", "components"}
    assert {c["component"]: c["parameters"] for c in t["components"]} == {n: o["parameters"] for n, o in oracle.items()}
    table = CliRunner().invoke(main, [str(folder)]).stdout
    assert "do not hold the same model" in table and "(total)" not in table
    assert f"{folder.name}/a-Q8_0.gguf: tie token_embd.weight = output.weight: gguf: output.weight not stored" in table  # each file's ties
    r = CliRunner().invoke(main, ["diff", str(folder), str(folder)])
    assert r.exit_code == 2 and "holds 2 GGUF files" in r.stderr and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------ --verify-ties


def test_verify_ties_reads_each_file_of_a_set_against_its_own_bytes(made, where):
    from ckptcount.verify.run import verify_report

    _need(made, "gguf-f32")
    folder, oracle = made["gguf-f32"]
    report = verify_report(audit(where("gguf-f32")), device="cpu", backend="numpy")
    assert report.verification is None  # the set has no one pair: each file has its own
    checks = {c.name: c.report.verification.embedding_vs_head for c in report.layout.components}
    assert {n: c.names for n, c in checks.items()} == {n: ("token_embd.weight", "output.weight") for n in oracle}
    assert {n: c.pearson_r for n, c in checks.items()} == pytest.approx(oracle, abs=1e-9)
    assert checks["tiny-F32.gguf"].identical and not checks["tiny-F32-retrained.gguf"].identical
    assert all(c.bytes_read == 2 * 16 * 8 * 4 for c in checks.values())  # the two tensors, nothing else
    said = [f.message for f in report.checkpoint.findings if f.kind == "untied-but-identical"]
    assert len(said) == 1 and said[0].startswith("tiny-F32.gguf: output.weight is a byte-identical copy of token_embd.weight")
    if hasattr(where, "server"):  # the tensors by range requests, like the headers
        assert all(r.range for r in where.server.requests() if r.path.endswith(".gguf"))


def test_verify_ties_on_several_models_in_the_cli(made):
    _need(made, "gguf-f32")
    _need(made, "sd")
    folder = made["gguf-f32"][0]
    r = CliRunner().invoke(main, [str(folder), "--verify-ties", "--device", "cpu", "--strict"])
    assert r.exit_code == 4, r.output
    assert f"{folder.name}/tiny-F32.gguf: verify token_embd.weight vs output.weight: r=1.000000000, max |diff| 0, identical bytes" in r.stdout
    assert f"{folder.name}/tiny-F32-retrained.gguf: verify token_embd.weight vs output.weight: r=" in r.stdout
    (t,) = json.loads(CliRunner().invoke(main, [str(folder), "--verify-ties", "--device", "cpu", "--format", "json"]).stdout)["targets"]
    assert {c["component"]: c["embedding_vs_head"]["verification"]["identical"] for c in t["components"]} == {"tiny-F32.gguf": True, "tiny-F32-retrained.gguf": False}
    # a pipeline without a head or a tie: each component says there was nothing to compare, none is left silent
    sd = made["sd"][0]
    r = CliRunner().invoke(main, [str(sd), "--verify-ties", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if ": verify" in line]
    assert len(lines) == 3 and all(": nothing to compare: " in line for line in lines)
    from safetensors import safe_open

    with safe_open(sd / "text_encoder" / "model.safetensors", "np") as f:
        (embedding,) = [k for k in f.keys() if k.endswith("token_embedding.weight")]
    assert f"{sd.name}/text_encoder: verify: nothing to compare: {embedding} has no output head beside it" in lines[0]


# ------------------------------------------------------------------------------------------------ the plan, pure


def test_weight_names_of_variants_and_shards():
    files = {
        "diffusion_pytorch_model.safetensors.index.json": 10, "diffusion_pytorch_model-00001-of-00002.safetensors": 100,
        "diffusion_pytorch_model-00002-of-00002.safetensors": 50, "diffusion_pytorch_model.safetensors.index.fp16.json": 10,
        "diffusion_pytorch_model-00001-of-00002.fp16.safetensors": 60, "diffusion_pytorch_model-00002-of-00002.fp16.safetensors": 20,
        "diffusion_pytorch_model.non_ema.bin": 999, "config.json": 1,
    }
    assert pick_weights(files, None) == ("diffusion_pytorch_model.safetensors.index.json", {"fp16": (2, 80), "non_ema": (1, 999)}, False)
    assert pick_weights(files, "fp16") == ("diffusion_pytorch_model.safetensors.index.fp16.json", {"plain": (2, 150), "non_ema": (1, 999)}, False)
    assert pick_weights({"model.safetensors": 5}, "fp16") == ("model.safetensors", {}, True)
    assert pick_weights({"config.json": 5}, None) == (None, {}, False)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": 1, "diffusion_pytorch_model-00002-of-00002.safetensors": 1}
    p = plan({"model_index.json": 1, "unet/model.safetensors": 1, **{f"vae/{n}": s for n, s in shards.items()}},
             lambda name: {"unet": ["diffusers", "U"], "vae": ["diffusers", "AutoencoderKL"]}, "repo")
    assert [x.name for x in p.parts] == ["unet"] and dict(p.not_counted)["vae"] == "AutoencoderKL (diffusers): no index for its shards"
    assert p.findings[0].kind == "not-counted"  # a part of the pipeline is left out: said, and --strict fails


def test_names_from_the_layout_files_stay_inside():
    listing = {"model_index.json": 1, "unet/diffusion_pytorch_model.safetensors": 5}
    index = {"_class_name": "X", "unet": ["diffusers", "U"], "../up": ["diffusers", "U"], "a/b": ["diffusers", "U"]}
    p = plan(listing, lambda name: index, "repo")
    assert [x.path for x in p.parts] == ["unet/diffusion_pytorch_model.safetensors"]
    assert [f.kind for f in p.findings] == ["unsafe-path", "unsafe-path"]
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"}, {"path": "../x", "type": "D"}]
    p = plan({"modules.json": 1, "model.safetensors": 5}, lambda name: modules, "repo")
    assert [x.path for x in p.parts] == [""] and p.findings[0].kind == "unsafe-path"


@pytest.mark.parametrize("where", ["plain-server", "hub-server"], indirect=True)
@pytest.mark.parametrize("key", ["sd", "st", "st-sharded", "lora", "lora-beside-model", "gguf"])
def test_hub_requests_are_the_whole_audits_and_the_repo_is_listed_once(made, key, where):
    """`hub.requests` is every request the server answered for the audit: the first read that found no one model,
    the plan, each part, and an adapter's base; the parts reuse the plan's listing."""
    _need(made, key)
    target = where(key)
    report = audit(target)
    log = where.server.settled()
    assert report.checkpoint.origin["requests"] == len(log)
    assert report.checkpoint.origin["bytes_received"] == sum(r.sent for r in log)
    assert len([r for r in log if r.path.startswith(f"/api/models/{target}/")]) == 1


def test_options_for_another_layout_are_said_not_used(made):
    folder, _ = _need(made, "base")
    report = audit(str(folder), variant="fp16", base=str(folder))
    said = [f.message for f in report.checkpoint.findings if f.kind == "option-unused"]
    assert len(said) == 2 and said[0].startswith("--variant fp16: applies to a diffusers pipeline")
    assert said[1].startswith(f"--base {folder}: applies to a PEFT adapter")
    assert CliRunner().invoke(main, [str(folder), "--base", str(folder), "--strict"]).exit_code == 4


def test_plain_repos_get_no_plan():
    assert plan({"model.safetensors": 1, "config.json": 1}, lambda n: None, "r") is None
    assert plan({"a.gguf": 1, "model.safetensors": 1}, lambda n: None, "r") is None  # safetensors counted, gguf noted
    split = {"x-00001-of-00002.gguf": 1, "x-00002-of-00002.gguf": 1}
    assert plan(split, lambda n: None, "r") is None  # one split set is one model
    two = plan({**split, "y.gguf": 1}, lambda n: None, "r")
    assert [x.path for x in two.parts] == ["x-00001-of-00002.gguf", "y.gguf"]
