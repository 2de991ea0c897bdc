"""Run on the GPU machine once per carried folder: `python3 scripts/gpu/receive.py .gpucarry_X` (README.md).

Keeps the parts in /tmp/w/parts, installs carried wheels into /tmp/site, and as soon as the parts hold
them: converts the smollm2 GGUF into /tmp/w/smollm2 (in a detached process, so the command returns while
it runs; /tmp/w/smollm2.done or .failed marks the end), and unpacks minilm-l6 (fp32 again) and the data.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

WORK = Path("/tmp/w")
PARTS = WORK / "parts"
SITE = Path("/tmp/site")
ROOT = Path(__file__).resolve().parents[2]


def install_wheels(folder: Path) -> None:
    wheels = sorted(folder.glob("*.whl"))
    if wheels and not os.environ.get("RECEIVE_SKIP_WHEELS"):  # set for a local dry run
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        print(f"installed {len(wheels)} wheels into {SITE}", flush=True)


def blob_prefix() -> bytes:
    data = b""
    for index in range(4):
        part = PARTS / f"blob.part{index}"
        if not part.is_file():
            break
        data += part.read_bytes()
    return data


def members_complete(data: bytes) -> dict[str, bytes]:
    """Members of the (possibly truncated) tar whose bytes are all present."""
    found = {}
    stream = io.BytesIO(data)
    try:
        with tarfile.open(fileobj=stream, mode="r:") as archive:
            for member in archive:
                if member.offset_data + member.size > len(data):
                    break
                found[member.name] = data[member.offset_data:member.offset_data + member.size]
    except tarfile.TarError:
        pass
    return found


def start_smollm2_conversion(gguf_xz: bytes) -> None:
    if (WORK / "smollm2.done").exists() or (WORK / "smollm2.started").exists():
        return
    gguf_dir = WORK / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    (gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(lzma.decompress(gguf_xz))
    (WORK / "smollm2.started").write_text("")
    code = ("import sys; sys.path.insert(0, %r); from pathlib import Path; "
            "from sft_core.offline_conversion import convert_gguf_causal_lm; "
            "convert_gguf_causal_lm(Path('/tmp/w/gguf/SmolLM2-135M-Instruct.Q4_1.gguf'), Path('/tmp/w/smollm2')); "
            "Path('/tmp/w/smollm2.done').write_text('ok')") % str(ROOT)
    shell = f"{sys.executable} -c \"{code}\" > /tmp/w/smollm2.log 2>&1 || touch /tmp/w/smollm2.failed"
    env = dict(os.environ, PYTHONPATH=str(SITE), OMP_NUM_THREADS="8")
    subprocess.Popen(["setsid", "bash", "-c", shell], env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    print("smollm2 conversion started (detached); log /tmp/w/smollm2.log", flush=True)


def unpack_minilm(data: bytes) -> None:
    target = WORK / "minilm-l6"
    if (target / "model.safetensors").is_file():
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as archive:
        archive.extractall(WORK, filter="data")
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(target / "model.fp16.safetensors")
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              target / "model.safetensors", metadata={"format": "pt"})
    (target / "model.fp16.safetensors").unlink()
    print(f"minilm-l6 ready at {target} (fp16-rounded weights, stored fp32)", flush=True)


def main() -> int:
    folder = Path(sys.argv[1])
    PARTS.mkdir(parents=True, exist_ok=True)
    for part in sorted(folder.glob("blob.part*")):
        shutil.copyfile(part, PARTS / part.name)
        print(f"kept {part.name} ({part.stat().st_size} bytes)", flush=True)
    install_wheels(folder)
    data = blob_prefix()
    members = members_complete(data)
    print(f"parts: {sorted(p.name for p in PARTS.iterdir())}; complete members: {sorted(members)}", flush=True)
    if "smollm2.gguf.xz" in members:
        start_smollm2_conversion(members["smollm2.gguf.xz"])
    if (folder / "blob.sha256").is_file():
        expected = (folder / "blob.sha256").read_text().split()[0]
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            print(f"blob sha256 mismatch: {actual} != {expected}", flush=True)
            return 1
        print("blob sha256 ok", flush=True)
    if "minilm-l6.tar.xz" in members:
        unpack_minilm(members["minilm-l6.tar.xz"])
    if "datasets.tar.xz" in members and not (WORK / "datasets").is_dir():
        with tarfile.open(fileobj=io.BytesIO(members["datasets.tar.xz"]), mode="r:xz") as archive:
            archive.extractall(WORK, filter="data")
        print(f"datasets ready at {WORK / 'datasets'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
