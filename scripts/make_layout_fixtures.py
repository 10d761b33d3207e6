"""Write fixtures/sd-tiny: a tiny diffusers StableDiffusionPipeline as ``save_pretrained`` lays it out (model_index.json,
unet/, vae/, text_encoder/, tokenizer/, scheduler/, and the fp16 variant files), every weight file cut to its header.

The pipeline is built and saved by diffusers and transformers themselves (tests/repo_layouts.py); each
``*.safetensors`` is then truncated to 8 + N bytes, the header of the real file without its data, which ckptcount
counts like the real file ("header only"). Needs the test extras (torch, diffusers).

    python scripts/make_layout_fixtures.py [--out fixtures]
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def header_only(path: Path) -> None:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = f.read(n)
    path.write_bytes(struct.pack("<Q", n) + head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "fixtures")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import repo_layouts

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "sd-tiny"
        oracle = repo_layouts.diffusers_pipeline(built)
        for f in built.rglob("*.safetensors"):
            header_only(f)
        target = a.out / "sd-tiny"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(built, target)
    print(f"{target}: {oracle}")


if __name__ == "__main__":
    main()
