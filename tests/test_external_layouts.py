"""External checkpoints in the on-disk layouts their projects publish, loaded as a user who downloaded one would.

Each directory carries the family's real config keys, file names and special-token names (sizes and ids shrunk: the
special tokens follow a small byte-level BPE instead of sitting at 151643 or 126081): bf16 weights in shards listed
by model.safetensors.index.json, generation_config.json, tokenizer_config.json, special_tokens_map.json and the
remote-code files the checkpoints ship (never run). The Dream family (Dream, DiffuCoder, Dream-Coder) publishes its
tokenizer as vocab.json + merges.txt with the special tokens in tokenizer_config.json, and no tokenizer.json.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from engine import external
from engine.api import Engine
from engine.checkpoint import load_model
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.model import DiffusionLM

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "x = [1, 2, 3]\ny = {'a': 1}\n# comment héllo\n\tz = None\n",
]
SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
         r"""\s*[\r\n]+|\s+(?!\S)|\s+""")  # Qwen2's pre-tokenizer split

# Qwen2.5's added tokens in their order (151643 on), then Dream's two; LLaDA's from 126080.
QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
        "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
        "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
DREAM = QWEN + ["<|beginoftext|>", "<|mask|>"]
LLADA = ["<|startoftext|>", "<|endoftext|>", "<|reserved_token_0|>", "<|mdm_mask|>", "<|start_header_id|>",
         "<|end_header_id|>", "<|eot_id|>"]
H, LAYERS, HEADS, KV, INTER = 32, 2, 4, 2, 48
BPE = tuple[dict[str, int], list[str]]


@pytest.fixture(scope="module")
def bpe() -> BPE:
    """A small Qwen2-style byte-level BPE: (vocab.json, merges as 'a b' lines)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(CODE * 10, trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def tokenizer_json(vocab: dict[str, int], merges: list[str], added: dict[int, str]) -> str:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split()) for m in merges]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    data["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, c in sorted(added.items())]
    return json.dumps(data)


def added_decoder(added: dict[int, str]) -> dict[str, dict[str, object]]:
    return {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True} for i, c in sorted(added.items())}


def random_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Their tensor names -> random bf16 tensors of our model's shapes."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DiffusionLM(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for theirs, ours in external.tensor_name_map(cfg).items():
        shape = shapes[ours]
        t = torch.randn(shape, generator=g) / math.sqrt(shape[-1]) if len(shape) > 1 else 1 + 0.1 * torch.randn(
            shape, generator=g)
        out[theirs] = t.to(torch.bfloat16)
    return out


def write_shards(d: Path, tensors: dict[str, torch.Tensor], n: int = 2) -> None:
    names = list(tensors)
    per = -(-len(names) // n)
    weight_map = {}
    for s in range(n):
        shard = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[s * per:(s + 1) * per]}
        save_file(part, str(d / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                 "weight_map": weight_map}))


def dream_config(vocab_size: int, mask_id: int, end_id: int, bos_id: int) -> dict[str, object]:
    """Dream-org/Dream-v0-Instruct-7B's config.json keys, the sizes shrunk."""
    return {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": bos_id, "eos_token_id": end_id, "hidden_act": "silu", "hidden_size": H,
        "initializer_range": 0.02, "intermediate_size": INTER, "mask_token_id": mask_id,
        "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "num_key_value_heads": KV, "pad_token_id": end_id,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False,
        "use_sliding_window": False, "vocab_size": vocab_size,
    }


def write_dream(d: Path, bpe: BPE, specials: list[str] = DREAM,
                tokenizer_json_too: bool = False, vocab_size: int | None = None,
                head_rows: dict[str, float] | None = None) -> dict[str, int]:
    """A Dream-family directory as published: vocab.json + merges.txt, the added tokens in tokenizer_config.json.

    head_rows: lm_head rows to set to +-value * e_0 with every other row zero (the head then always picks one of
    them). Returns the special tokens' ids."""
    vocab, merges = bpe
    d.mkdir(parents=True, exist_ok=True)
    added = {len(vocab) + i: s for i, s in enumerate(specials)}
    ids = {s: i for i, s in added.items()}
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    if tokenizer_json_too:
        (d / "tokenizer.json").write_text(tokenizer_json(vocab, merges, added))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added_decoder(added),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}, "bos_token": "<|beginoftext|>",
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
        "mask_token": "<|mask|>", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "DreamTokenizer", "unk_token": None}))
    (d / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>", "mask_token": "<|mask|>", "pad_token": "<|endoftext|>"}))
    vocab_size = vocab_size or -(-(len(vocab) + len(specials) + 1) // 64) * 64  # padded, as Dream's 152064
    mask = ids.get("<|mask|>", ids.get("<M>"))
    config = dream_config(vocab_size, mask, ids["<|endoftext|>"], ids.get("<|beginoftext|>", ids["<|endoftext|>"]))
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "generation_config.json").write_text(json.dumps({
        "_from_model_config": True, "alg": "origin", "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"], "mask_token_id": None, "pad_token_id": ids["<|endoftext|>"],
        "steps": 512, "temperature": 0.0}))
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py"):
        (d / name).write_text("raise RuntimeError('remote code must never run')\n")
    cfg = external.translate_config(config, external.DREAM)
    tensors = random_weights(cfg, seed=3)
    if head_rows:
        head = torch.zeros_like(tensors["lm_head.weight"])
        for i, (token, value) in enumerate(head_rows.items()):
            head[ids[token], 0] = value
        tensors["lm_head.weight"] = head
    write_shards(d, tensors, 3)
    return ids


# ------------------------------------------------------------------------------------------------------------
# The Dream family's tokenizer: vocab.json + merges.txt


def test_dream_as_published_loads_without_tokenizer_json(tmp_path: Path, bpe: BPE) -> None:
    ids = write_dream(tmp_path / "dream", bpe)
    model, tok = load_model(tmp_path / "dream")
    assert model.cfg.family == "Dream" and model.cfg.logits_shift == 1
    assert model.embed_tokens.weight.dtype == torch.bfloat16  # the checkpoint's precision
    assert (tok.mask_id, tok.end_id) == (ids["<|mask|>"], ids["<|endoftext|>"])
    assert ids["<|im_end|>"] in tok.end_ids
    text = "def f(x):\n    return x + 'é'  12\r\n\tz = None"
    assert tok.decode(tok.encode(text)) == text

    # The same vocabulary as a tokenizer.json (how a port or a re-save ships it) encodes every text the same.
    write_dream(tmp_path / "port", bpe, tokenizer_json_too=True)
    _, tok_json = load_model(tmp_path / "port")
    for sample in CODE + [text, "a<|im_start|>b<|mask|>"]:
        assert tok.encode_with_offsets(sample) == tok_json.encode_with_offsets(sample)


def test_dream_tokenizer_matches_transformers_qwen2_tokenizer(tmp_path: Path, bpe: BPE) -> None:
    transformers = pytest.importorskip("transformers")
    write_dream(tmp_path / "dream", bpe)
    _, tok = load_model(tmp_path / "dream")
    ref_dir = tmp_path / "ref"  # the same files, read by transformers' own Qwen2Tokenizer (no remote code)
    ref_dir.mkdir()
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(tmp_path / "dream" / name, ref_dir / name)
    tc = json.loads((tmp_path / "dream" / "tokenizer_config.json").read_text())
    tc.pop("auto_map")
    tc["tokenizer_class"] = "Qwen2Tokenizer"
    (ref_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    ref = transformers.AutoTokenizer.from_pretrained(str(ref_dir))
    for sample in CODE + ["x  =  1\n\n\n  y<|mask|>z <|im_start|>", "caf\u0065\u0301 == 'café'"]:
        assert tok.encode(sample) == ref.encode(sample, add_special_tokens=False), sample


def test_open_dcoder_with_vocab_and_merges_only(tmp_path: Path, bpe: BPE) -> None:
    """A Qwen2 directory whose tokenizer_config.json adds <M> is Open-dCoder; one without it is refused by name."""
    vocab, merges = bpe
    d = tmp_path / "odc"
    write_dream(d, bpe, specials=QWEN + ["<M>"])
    config = json.loads((d / "config.json").read_text())
    for key in ("auto_map", "mask_token_id", "pad_token_id"):
        config.pop(key)
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False)
    (d / "config.json").write_text(json.dumps(config))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="Qwen2Tokenizer", mask_token="<M>")
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    model, tok = load_model(d)
    assert model.cfg.family == "open-dcoder" and tok.mask_id == len(vocab) + len(QWEN)

    tc["added_tokens_decoder"] = {k: v for k, v in tc["added_tokens_decoder"].items() if v["content"] != "<M>"}
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(CheckpointError, match="<M>.*tokenizer_config.json has none"):
        load_model(d)


def test_vocab_and_merges_of_another_tokenizer_class_is_a_clear_error(tmp_path: Path, bpe: BPE) -> None:
    d = tmp_path / "dream"
    write_dream(d, bpe)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "GPT2Tokenizer"
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(CheckpointError, match="missing tokenizer.json.*GPT2Tokenizer.*save_pretrained"):
        load_model(d)


def test_added_token_clashing_with_the_vocabulary_is_named(tmp_path: Path, bpe: BPE) -> None:
    d = tmp_path / "dream"
    write_dream(d, bpe)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"]["5"] = {"content": "<|dlm_pad|>", "special": True}  # id 5 is a byte of vocab.json
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: added token '<\|dlm_pad\|>' has id 5"):
        load_model(d)
    (d / "merges.txt").write_text("#version: 0.2\nnot-a-merge\n")
    with pytest.raises(CheckpointError, match="merges.txt: line 2"):
        load_model(d)


# ------------------------------------------------------------------------------------------------------------
# Special tokens never reach the text of a fill


def test_control_tokens_end_a_fill_and_never_show_in_it(tmp_path: Path, bpe: BPE) -> None:
    """A head that only ever picks <|fim_middle|> or <|im_start|> (no end token): the fill is empty, not markup."""
    write_dream(tmp_path / "dream", bpe, tokenizer_json_too=True,
                head_rows={"<|fim_middle|>": 20.0, "<|im_start|>": -20.0})
    engine = Engine.from_pretrained(tmp_path / "dream", device="cpu", dtype="float32")
    tok = engine.tokenizer
    for token in ("<|fim_middle|>", "<|im_start|>", "<|file_sep|>", "<|beginoftext|>"):
        assert tok.tok.token_to_id(token) in tok.end_ids
    assert tok.mask_id not in tok.end_ids
    fill = engine.fill("def add(a, b):\n    return ", "\n", max_tokens=8, single_line=True)
    assert "<|" not in fill.text and fill.ended
    fill = engine.fill("def add(a, b):\n", "\nprint(add(1, 2))\n", max_tokens=16)
    assert "<|" not in fill.text and fill.ended


def test_llada_reserved_and_chat_tokens_decode_to_nothing(tmp_path: Path, bpe: BPE) -> None:
    """LLaDA as published: tokenizer.json, untied ff_out, sharded bf16, remote code beside it."""
    vocab, merges = bpe
    d = tmp_path / "llada"
    d.mkdir()
    added = {len(vocab) + i: s for i, s in enumerate(LLADA)}
    ids = {s: i for i, s in added.items()}
    (d / "tokenizer.json").write_text(tokenizer_json(vocab, merges, added))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added_decoder(added), "bos_token": "<|startoftext|>", "eos_token": "<|eot_id|>",
        "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    config = {
        "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_layer_norm": False,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": H,
        "embedding_size": 384, "eos_token_id": ids["<|endoftext|>"], "include_bias": False,
        "include_qkv_bias": False, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": ids["<|mdm_mask|>"], "max_sequence_length": 4096, "mlp_hidden_size": INTER, "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": HEADS, "n_kv_heads": HEADS, "n_layers": LAYERS,
        "pad_token_id": ids["<|endoftext|>"], "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "torch_dtype": "bfloat16", "use_cache": False,
        "vocab_size": 384, "weight_tying": False,
    }
    (d / "config.json").write_text(json.dumps(config))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": ids["<|startoftext|>"],
                                                           "eos_token_id": ids["<|endoftext|>"]}))
    for name in ("configuration_llada.py", "modeling_llada.py"):
        (d / name).write_text("raise RuntimeError('remote code must never run')\n")
    write_shards(d, random_weights(external.translate_config(config, external.LLADA), seed=1), 3)
    model, tok = load_model(d)
    assert (tok.mask_id, tok.end_id) == (ids["<|mdm_mask|>"], ids["<|endoftext|>"])
    a = tok.encode("a")
    chat = [ids["<|startoftext|>"], ids["<|start_header_id|>"], ids["<|reserved_token_0|>"], ids["<|eot_id|>"]]
    assert tok.decode(a + chat + a) == "aa"
    assert set(chat) <= tok.end_ids and tok.mask_id not in tok.end_ids
    for dtype in ("float32", "bfloat16", "int8"):
        fill = Engine.from_pretrained(d, device="cpu", dtype=dtype).fill("x = ", "\n", max_tokens=6)
        assert "<|" not in fill.text


# ------------------------------------------------------------------------------------------------------------
# Directories that cannot work say so when they are loaded


def test_tokenizer_with_ids_past_the_embedding_is_refused_at_load(tmp_path: Path, bpe: BPE) -> None:
    """DreamOn's tokenizer (<|expand|>, <|delete|> after <|mask|>) beside Dream weights that end at <|mask|>: the
    first file holding "<|delete|>" would have crashed a fill (an embedding index out of range)."""
    vocab, _ = bpe
    d = tmp_path / "mixed"
    write_dream(d, bpe, specials=DREAM + ["<|expand|>", "<|delete|>"], vocab_size=len(vocab) + len(DREAM),
                tokenizer_json_too=True)
    with pytest.raises(CheckpointError, match=r"tokenizer.json: the tokenizer has ids up to .*'<\|delete\|>'"):
        load_model(d)
    (d / "tokenizer.json").unlink()  # as published: vocab.json + merges.txt, the added tokens in tokenizer_config.json
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: the tokenizer has ids up to"):
        load_model(d)


def test_hugging_face_cache_folder_points_at_its_snapshot(tmp_path: Path, bpe: BPE) -> None:
    repo = tmp_path / "models--Dream-org--Dream-v0-Base-7B"
    snapshot = repo / "snapshots" / "0123abcd"
    write_dream(snapshot, bpe)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    with pytest.raises(CheckpointError, match=f"Hugging Face cache folder.*{snapshot}"):
        load_model(repo)
    assert load_model(snapshot)[0].cfg.family == "Dream"


def test_pickle_only_external_checkpoint_is_refused(tmp_path: Path, bpe: BPE) -> None:
    d = tmp_path / "dream"
    write_dream(d, bpe)
    for shard in d.glob("model-*.safetensors"):
        shard.rename(shard.with_name(shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")))
    (d / "model.safetensors.index.json").rename(d / "pytorch_model.bin.index.json")
    with pytest.raises(CheckpointError, match="pytorch_model-00001-of-00003.bin: a pickle-based.*safetensors"):
        load_model(d)
