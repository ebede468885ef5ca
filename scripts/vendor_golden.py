"""Copy the public golden set (outputs of the official code on tiny checkpoints) into ``tests/parity/``, so parity
with the official code is tested from any clone, without ``../shared`` beside it.

Trimmed to what a clone needs: the manifest, the tiny checkpoints and the case files, without the largest
tensors whose content another tensor of the same case already pins (``TRIMMED``). The parity tests read a
trimmed key only where it is present (the full set in CI still has it).

Usage: ``.venv/bin/python scripts/vendor_golden.py [--source ../shared/golden]``
"""

import argparse
import json
import os
import shutil

from safetensors.torch import load_file, save_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPO_ROOT, "tests", "parity")
# The float decode (4.8 MB per text-to-video case): the same decode is compared as uint8 frames within 1.
TRIMMED = ("decode/vae_decode_float",)


def vendor(source: str, target: str = TARGET) -> None:
    if os.path.isdir(target):
        shutil.rmtree(target)
    # Plain copies: the shared set is read-only, the vendored copy must stay writable for the next run.
    shutil.copytree(os.path.join(source, "checkpoints"), os.path.join(target, "checkpoints"),
                    copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(target):
        os.chmod(folder, 0o755)
    shutil.copyfile(os.path.join(source, "manifest.json"), os.path.join(target, "manifest.json"))
    os.makedirs(os.path.join(target, "cases"))
    for name in sorted(os.listdir(os.path.join(source, "cases"))):
        path = os.path.join(source, "cases", name)
        if name.endswith(".safetensors"):
            kept = {key: tensor for key, tensor in load_file(path).items() if key not in TRIMMED}
            save_file(kept, os.path.join(target, "cases", name))
        else:
            shutil.copyfile(path, os.path.join(target, "cases", name))
    with open(os.path.join(target, "trimmed.json"), "w", encoding="utf-8") as f:
        json.dump({"source_set": json.load(open(os.path.join(source, "manifest.json"))).get("set"),
                   "trimmed_keys": list(TRIMMED)}, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=os.path.join(REPO_ROOT, "..", "shared", "golden"))
    vendor(os.path.abspath(parser.parse_args().source))


if __name__ == "__main__":
    main()
