"""Load and save a model directory: config.json + safetensors weights + tokenizer.json.

A directory holds `config.json`, the weights as `model.safetensors` or as shards listed in
`model.safetensors.index.json`, and `tokenizer.json`. Our own format (model_type "codefill") stores ModelConfig as
config.json and our parameter names; external families (LLaDA, the Dream family, Open-dCoder) are recognised from
their config.json and mapped onto the same DiffusionLM (see engine/external.py). A Qwen2-style tokenizer may come as
vocab.json + merges.txt with its special tokens in tokenizer_config.json instead: the Dream family publishes no
tokenizer.json.

Loading never unpickles anything: only safetensors files are read, their headers are checked against the file
size before any tensor is touched, and the model is built on the meta device so that each weight is materialised
once, straight from the memory-mapped file (safetensors' safe_open) into the parameter that owns it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from engine import external
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.model import DiffusionLM, rotary_inv_freq
from engine.tokenizer import FAMILY_TOKENS, CodeTokenizer, TokenizerError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
# A slow (Python) tokenizer's files: the Dream family publishes only these (DreamTokenizer has no fast version).
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # its added_tokens_decoder holds the special tokens and their ids
ADDED_TOKENS_FILE = "added_tokens.json"  # older transformers wrote the added tokens here ({token: id})

# Tokenizer classes whose vocab.json + merges.txt are a Qwen2 byte-level BPE, and the pre-tokenizer split of Qwen2's
# tokenizer (the same in Qwen2Tokenizer and Dream's tokenization_dream.py).
QWEN2_TOKENIZER_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "DreamTokenizer")
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")

# Weight files we refuse to open: pickle-based formats can run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# safetensors dtype codes -> torch dtypes we accept as weights, and their sizes in bytes.
_FLOAT_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
}
_OTHER_DTYPE_SIZES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, dtype code and shape, from the safetensors header."""

    file: Path
    dtype: str
    shape: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------------------
# Reading a directory


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: a pickle-based weight file; codefill only loads safetensors (model.safetensors or shards listed "
        f"in {INDEX_FILE}) and never unpickles weights. Convert it to safetensors first."
    )


def _check_directory(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser()
    if root.is_file():
        if root.name.lower().endswith(PICKLE_SUFFIXES):
            _refuse_pickle(root)
        raise CheckpointError(f"{root}: expected a model directory (config.json, weights, tokenizer.json), not a file")
    if not root.is_dir():
        raise CheckpointError(f"{root}: model directory not found")
    return root


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: {what} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise CheckpointError(f"{path}: invalid JSON in {what} ({where}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, not {type(data).__name__}")
    return data


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check one safetensors header against the file size; no tensor data is read.

    Raises CheckpointError naming the file when it is truncated or malformed.
    """
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        _refuse_pickle(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: truncated safetensors file ({size} bytes, shorter than its 8-byte header length)"
                )
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file: header length {n} is bigger than the file "
                    f"({size} bytes)"
                )
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: safetensors header length {n} is over the {_MAX_HEADER}-byte limit")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_size = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
        if dtype in _FLOAT_DTYPES:
            itemsize = _FLOAT_DTYPES[dtype][1]
        elif dtype in _OTHER_DTYPE_SIZES:
            itemsize = _OTHER_DTYPE_SIZES[dtype]
        else:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which codefill cannot load")
        begin, end = offsets
        numel = 1
        for s in shape:
            numel *= s
        if not 0 <= begin <= end or end - begin != numel * itemsize:
            raise CheckpointError(
                f"{path}: tensor {name!r} data_offsets {offsets} do not match its shape {tuple(shape)} and dtype "
                f"{dtype}"
            )
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at data byte {end} but the file holds "
                f"only {data_size} bytes of data"
            )
        entries[name] = TensorEntry(path, dtype, tuple(shape))
    return entries


def _weight_files(root: Path) -> dict[str, TensorEntry]:
    """Every tensor of the directory, from model.safetensors or the shard index; headers checked."""
    single = root / WEIGHTS_FILE
    index = root / INDEX_FILE
    if single.is_file():
        return read_safetensors_header(single)
    if index.is_file():
        data = _read_json(index, "shard index")
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: shard index has no weight_map object")
        shards: dict[str, dict[str, TensorEntry]] = {}
        entries: dict[str, TensorEntry] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or not shard:
                raise CheckpointError(f"{index}: tensor {name!r} maps to {shard!r}, not a shard file name")
            rel = Path(shard)
            if rel.is_absolute() or ".." in rel.parts:
                raise CheckpointError(f"{index}: shard {shard!r} is outside the model directory")
            shard_path = root / rel
            if shard.lower().endswith(PICKLE_SUFFIXES):
                _refuse_pickle(shard_path)
            if not shard.endswith(".safetensors"):
                raise CheckpointError(f"{index}: shard {shard!r} is not a .safetensors file")
            if shard not in shards:
                if not shard_path.is_file():
                    raise CheckpointError(f"{index}: points at shard {shard!r}, which is missing ({shard_path})")
                shards[shard] = read_safetensors_header(shard_path)
            if name not in shards[shard]:
                raise CheckpointError(f"{shard_path}: missing tensor {name!r}, which {INDEX_FILE} places in this shard")
            entries[name] = shards[shard][name]
        for shard, held in shards.items():
            for name in held:
                if name not in entries:
                    raise CheckpointError(f"{root / shard}: unexpected tensor {name!r}, not listed in {INDEX_FILE}")
        return entries
    pickles = sorted(p.name for p in root.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        _refuse_pickle(root / pickles[0])
    raise CheckpointError(f"{root}: missing weights: no {WEIGHTS_FILE} and no {INDEX_FILE}")


def _load_tokenizer_file(path: Path) -> Tokenizer:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise CheckpointError(f"{path}: not a valid tokenizer.json ({exc})") from None


def _load_tokenizer(root: Path, raw: dict[str, Any]) -> tuple[Tokenizer, Path]:
    """The directory's tokenizer and the file that names its special tokens (for messages).

    tokenizer.json when there is one; else a Qwen2-style vocab.json + merges.txt with the added tokens of
    tokenizer_config.json (how the Dream family, DiffuCoder among it, publishes its tokenizer).
    """
    path = root / TOKENIZER_FILE
    if path.is_file() or not ((root / VOCAB_FILE).is_file() and (root / MERGES_FILE).is_file()):
        return _load_tokenizer_file(path), path
    tok_config_path = root / TOKENIZER_CONFIG_FILE
    tok_config = _read_json(tok_config_path, "tokenizer config") if tok_config_path.is_file() else {}
    cls = tok_config.get("tokenizer_class")
    qwen2_family = external.family_of_model_type(raw.get("model_type")) in (external.DREAM, external.OPEN_DCODER)
    if not (cls in QWEN2_TOKENIZER_CLASSES or (cls is None and qwen2_family)):
        raise CheckpointError(
            f"{path}: missing tokenizer.json; the directory has {VOCAB_FILE} and {MERGES_FILE}, which codefill reads "
            f"only for Qwen2-style tokenizers ({', '.join(QWEN2_TOKENIZER_CLASSES)}), not tokenizer_class "
            f"{cls!r}. Write a tokenizer.json with transformers: "
            f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )
    return _qwen2_tokenizer(root, tok_config, tok_config_path), tok_config_path


def _added_tokens(root: Path, tok_config: dict[str, Any], tok_config_path: Path) -> dict[int, AddedToken]:
    """id -> added token, from tokenizer_config.json's added_tokens_decoder (and an older added_tokens.json)."""
    out: dict[int, AddedToken] = {}
    decoder = tok_config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise CheckpointError(f"{tok_config_path}: added_tokens_decoder must be an object of id -> token")
    for key, info in decoder.items():
        content = info.get("content") if isinstance(info, dict) else None
        if not (isinstance(key, str) and key.isdigit() and isinstance(content, str) and content):
            raise CheckpointError(f"{tok_config_path}: malformed added_tokens_decoder entry {key!r}: {info!r}")
        out[int(key)] = AddedToken(
            content, single_word=bool(info.get("single_word", False)), lstrip=bool(info.get("lstrip", False)),
            rstrip=bool(info.get("rstrip", False)), normalized=bool(info.get("normalized", False)),
            special=bool(info.get("special", True)),
        )
    added_path = root / ADDED_TOKENS_FILE
    if added_path.is_file():
        for content, ident in _read_json(added_path, "added tokens").items():
            if isinstance(ident, bool) or not isinstance(ident, int) or ident < 0 or not content:
                raise CheckpointError(f"{added_path}: malformed entry {content!r}: {ident!r}")
            out.setdefault(ident, AddedToken(content, normalized=False, special=True))
    return out


def _qwen2_tokenizer(root: Path, tok_config: dict[str, Any], tok_config_path: Path) -> Tokenizer:
    """A Qwen2 byte-level BPE from vocab.json + merges.txt, as transformers converts Qwen2Tokenizer: NFC, the Qwen2
    split, byte-level bytes; the added tokens keep the ids tokenizer_config.json gives them."""
    vocab_path, merges_path = root / VOCAB_FILE, root / MERGES_FILE
    vocab = _read_json(vocab_path, "tokenizer vocabulary")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()):
        raise CheckpointError(f"{vocab_path}: expected an object of token -> id")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{merges_path}: cannot read BPE merges ({exc})") from None
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{merges_path}: line {n} is not a merge of two tokens: {line!r}")
        merges.append((parts[0], parts[1]))
    added = _added_tokens(root, tok_config, tok_config_path)
    by_id = {i: t for t, i in vocab.items()}
    full = dict(vocab)
    for ident, token in added.items():
        if by_id.get(ident, token.content) != token.content or full.get(token.content, ident) != ident:
            raise CheckpointError(
                f"{tok_config_path}: added token {token.content!r} has id {ident}, which {vocab_path} gives to "
                f"{by_id.get(ident, token.content)!r} (and {token.content!r} to id {full.get(token.content)})"
            )
        full[token.content] = ident  # in the model's vocabulary, so that the added token keeps this id
    try:
        tok = Tokenizer(models.BPE(vocab=full, merges=merges, fuse_unk=False))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise CheckpointError(f"{merges_path}: does not fit {vocab_path} ({exc})") from None
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for ident in sorted(added):
        token = added[ident]
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    return tok


def _detect_family(raw: dict[str, Any], tok: Tokenizer, config_path: Path, tok_path: Path) -> str:
    model_type = raw.get("model_type")
    family = external.family_of_model_type(model_type)
    if family is None:
        if model_type is None:
            known = ", ".join(external.KNOWN_MODEL_TYPES)
            raise CheckpointError(f"{config_path}: no model_type; expected one of {known}")
        raise CheckpointError(
            f"{config_path}: unknown model_type {model_type!r}; codefill loads {', '.join(external.KNOWN_MODEL_TYPES)}"
        )
    if family == external.OPEN_DCODER and tok.token_to_id(external.OPEN_DCODER_MASK) is None:
        raise CheckpointError(
            f"{config_path}: model_type 'qwen2' is loaded only as Open-dCoder, whose {tok_path.name} has the "
            f"{external.OPEN_DCODER_MASK} mask token; {tok_path} has none (a plain autoregressive Qwen2 cannot infill)"
        )
    return family


def _model_config(raw: dict[str, Any], family: str, config_path: Path) -> ModelConfig:
    if family == external.CODEFILL:
        try:
            return ModelConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_path}: {exc}") from None
    return external.translate_config(raw, family, str(config_path))


def _resolve_mask_token(layout: str, raw: dict[str, Any], cfg: ModelConfig, tok: Tokenizer) -> str:
    """The mask token string.

    Our format stores it in config.json (mask_token). An external family uses its own name (FAMILY_TOKENS), unless
    its config.json's mask_token_id points at a different token, which then wins.
    """
    if layout == external.CODEFILL:
        return cfg.mask_token
    wanted = raw.get("mask_token_id")
    names = FAMILY_TOKENS[cfg.family]["mask"]
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        for name in names:
            if tok.token_to_id(name) == wanted:
                return name
        token = tok.id_to_token(wanted)
        if token is not None:
            return token
    return next((t for t in names if tok.token_to_id(t) is not None), names[0])


def _code_tokenizer(
    layout: str, raw: dict[str, Any], cfg: ModelConfig, tok: Tokenizer, tok_path: Path
) -> CodeTokenizer:
    """CodeTokenizer with the mask and end tokens of the model; cfg.mask_token/end_token are set to what was found."""
    mask = _resolve_mask_token(layout, raw, cfg, tok)
    family_ends = FAMILY_TOKENS.get(cfg.family, {}).get("end", [])
    ends = [cfg.end_token, *family_ends] if layout == external.CODEFILL else list(family_ends)
    ends = list(dict.fromkeys(ends))
    try:
        code_tok = CodeTokenizer(tok, mask, ends)
    except TokenizerError as exc:
        raise CheckpointError(f"{tok_path}: {exc}") from None
    for what, ident in (("mask", code_tok.mask_id), ("end", code_tok.end_id)):
        if ident >= cfg.vocab_size:
            raise CheckpointError(
                f"{tok_path}: the {what} token id {ident} is outside the model's vocabulary of {cfg.vocab_size}"
            )
    # Any text may encode to any id: one past the embedding would crash the first fill that met it.
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= cfg.vocab_size:
        raise CheckpointError(
            f"{tok_path}: the tokenizer has ids up to {top} ({tok.id_to_token(top)!r}), outside the model's "
            f"vocabulary of {cfg.vocab_size}: it is not the tokenizer of these weights"
        )
    cfg.mask_token = mask
    cfg.end_token = code_tok.tok.id_to_token(code_tok.end_id) or cfg.end_token
    return code_tok


def _name_map(
    layout: str, cfg: ModelConfig, expected: dict[str, torch.Size]
) -> tuple[dict[str, str], dict[str, str]]:
    """(checkpoint name -> our name for required tensors, ignorable name -> our name it has the shape of).

    layout is the directory's format (from model_type), not cfg.family: an external model saved by save_model
    keeps its family but has our names.
    """
    if layout == external.CODEFILL:
        names = {k: k for k in expected if not (cfg.tie_embeddings and k == "lm_head.weight")}
        return names, {}
    return external.tensor_name_map(cfg), external.ignorable_tensors(cfg)


def _match(layout: str, entries: dict[str, TensorEntry], names: dict[str, str], ignorable: dict[str, str],
           expected: dict[str, torch.Size], root: Path) -> None:
    """Check names and shapes from the headers alone, before any data is read."""
    for name, entry in entries.items():
        if name in names:
            ours = names[name]
        elif name in ignorable:
            ours = ignorable[name]
        elif external.is_ignorable_buffer(name):
            continue
        else:
            raise CheckpointError(
                f"{entry.file}: unexpected tensor {name!r} (not part of a {_LAYOUT_LABELS[layout]} model of this "
                "config)"
            )
        want = tuple(expected[ours])
        if entry.shape != want:
            raise CheckpointError(
                f"{entry.file}: tensor {name!r} has shape {list(entry.shape)} but config.json implies {list(want)}"
            )
        if entry.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{entry.file}: tensor {name!r} has dtype {entry.dtype}; only float weights are loaded "
                "(quantized checkpoints are not supported)"
            )
    missing = [name for name in names if name not in entries]
    if missing:
        where = sorted({str(e.file) for e in entries.values()}) or [str(root)]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{', '.join(where)}: missing tensor {missing[0]!r}{more}")


_LAYOUT_LABELS = {
    external.CODEFILL: "codefill",
    external.LLADA: "LLaDA",
    external.DREAM: "Dream",
    external.OPEN_DCODER: "Open-dCoder (Qwen2)",
}


def _target_dtype(
    entries: dict[str, TensorEntry], names: dict[str, str], dtype: torch.dtype | str | None
) -> torch.dtype:
    if dtype == "auto":
        dtype = None
    if dtype is not None:
        if isinstance(dtype, str):
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise CheckpointError(f"unknown dtype {dtype!r}")
            dtype = resolved
        if not dtype.is_floating_point:
            raise CheckpointError(f"dtype must be a floating-point type, not {dtype}")
        return dtype
    # One dtype for the whole model (mixed dtypes would break the matmuls): the embedding's.
    for name, ours in names.items():
        if ours == "embed_tokens.weight" and name in entries:
            return _FLOAT_DTYPES[entries[name].dtype][0]
    return torch.float32


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[DiffusionLM, CodeTokenizer]:
    """Load a model directory (ours or an external family) -> (DiffusionLM in eval mode, CodeTokenizer).

    dtype None (or "auto") keeps the checkpoint's precision: the dtype of its embedding, applied to every tensor; a
    torch dtype or its name ("bfloat16") casts. Raises CheckpointError, naming the file, for anything missing,
    malformed, truncated or inconsistent, and for a weight holding NaN or infinite values. Parameters are ordinary
    trainable nn.Parameters on `device`.
    """
    root = _check_directory(path)
    config_path = root / CONFIG_FILE
    if not config_path.is_file() and (root / "snapshots").is_dir():
        snapshots = sorted(str(p) for p in (root / "snapshots").iterdir() if (p / CONFIG_FILE).is_file())
        raise CheckpointError(
            f"{root}: a Hugging Face cache folder, not a model directory: point at one of its snapshots "
            f"({', '.join(snapshots) or 'none is complete'})"
        )
    raw = _read_json(config_path, "config.json")
    tok, tok_path = _load_tokenizer(root, raw)
    layout = _detect_family(raw, tok, config_path, tok_path)  # the directory's format: codefill or a family
    cfg = _model_config(raw, layout, config_path)
    entries = _weight_files(root)
    code_tok = _code_tokenizer(layout, raw, cfg, tok, tok_path)

    with torch.device("meta"):
        model = DiffusionLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    names, ignorable = _name_map(layout, cfg, expected)
    _match(layout, entries, names, ignorable, expected, root)
    target = _target_dtype(entries, names, dtype)
    dev = torch.device(device)

    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(entries[name].file, []).append(name)
    for file, file_names in by_file.items():
        try:
            # safe_open memory-maps the file; each tensor is copied once, onto the target device.
            with safe_open(str(file), framework="pt", device=str(dev) if dev.type != "cpu" else "cpu") as fh:
                for name in file_names:
                    tensor = fh.get_tensor(name)
                    if not torch.isfinite(tensor).all():  # garbled bytes: NaN weights crash or corrupt every fill
                        raise CheckpointError(
                            f"{file}: tensor {name!r} holds NaN or infinite values (the file is corrupt)"
                        )
                    state[names[name]] = tensor.to(target)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{file}: cannot read weights ({exc})") from None

    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # The rotary frequencies are a non-persistent buffer built on the meta device: rebuild them (float32 always),
    # with the same formula as DiffusionLM.__init__.
    model.inv_freq = rotary_inv_freq(cfg, dev)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{root}: internal error, tensors left unloaded: {', '.join(left[:5])}")
    model.eval()
    return model, code_tok


# ----------------------------------------------------------------------------------------------------------------
# Saving our own format


def _atomic_write(target: Path, write) -> None:  # type: ignore[no-untyped-def]
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a model directory is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plan_shards(state: dict[str, torch.Tensor], metadata: dict[str, str], max_bytes: int) -> list[list[str]]:
    """Tensor names grouped, in order, so that each group's safetensors file is at most max_bytes."""

    def file_size(names: list[str]) -> int:
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for n in names:
            t = state[n]
            size = t.numel() * t.element_size()
            header[n] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
            offset += size
        # safetensors pads the header to a multiple of 8 bytes; leave room for that and for its own spacing.
        return 8 + len(json.dumps(header)) + 8 + 64 + offset

    groups: list[list[str]] = []
    current: list[str] = []
    for name, t in state.items():
        if file_size([name]) > max_bytes:
            raise CheckpointError(
                f"tensor {name!r} ({t.numel() * t.element_size():,} bytes) does not fit a shard of {max_bytes:,} bytes"
            )
        if current and file_size(current + [name]) > max_bytes:
            groups.append(current)
            current = []
        current.append(name)
    groups.append(current)
    return groups


def _indexed_shards(out: Path) -> set[str]:
    """Shard files named by an existing index in out (to remove the ones a new save no longer uses)."""
    try:
        weight_map = json.loads((out / INDEX_FILE).read_text()).get("weight_map", {})
        return {s for s in weight_map.values() if isinstance(s, str) and "/" not in s and s.endswith(".safetensors")}
    except (OSError, ValueError, AttributeError):
        return set()


def save_model(
    model: DiffusionLM,
    tokenizer: str | os.PathLike[str] | CodeTokenizer | Tokenizer,
    out_dir: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write `out_dir` in our own format: config.json (ModelConfig), model.safetensors, tokenizer.json.

    Weights keep our parameter names; a tied lm_head is not written (it is the embedding). dtype casts floating
    weights (e.g. torch.bfloat16 to halve the file); None keeps them as they are. max_shard_bytes (None: one file)
    splits weights that do not fit one file of that size into model-0000i-of-0000n.safetensors shards listed in
    model.safetensors.index.json, each file at most that size (a single tensor larger than it is an error).
    Each file is written to a temporary name and renamed into place; weight files of the other layout left from an
    earlier save are removed. Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    state: dict[str, torch.Tensor] = {}
    for name, t in model.plain_state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.to("cpu").contiguous()

    _atomic_write(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n"))
    metadata = {"format": "pt", "family": cfg.family}
    shards = _plan_shards(state, metadata, max_shard_bytes) if max_shard_bytes is not None else [list(state)]
    old_shards = _indexed_shards(out)
    if len(shards) == 1:
        _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=metadata))
        (out / INDEX_FILE).unlink(missing_ok=True)
        written: set[str] = {WEIGHTS_FILE}
    else:
        weight_map: dict[str, str] = {}
        written = set()
        for i, names in enumerate(shards, 1):
            shard = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            part = {n: state[n] for n in names}
            _atomic_write(out / shard, lambda p, part=part: save_file(part, str(p), metadata=metadata))
            weight_map.update((n, shard) for n in names)
            written.add(shard)
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        # The index goes last: a reader never sees an index naming shards that are not there yet.
        (out / WEIGHTS_FILE).unlink(missing_ok=True)  # a single file would shadow the shards (see _weight_files)
        _atomic_write(out / INDEX_FILE, lambda p: p.write_text(json.dumps(index, indent=1) + "\n"))
    for stale in old_shards - written:
        (out / stale).unlink(missing_ok=True)

    target = out / TOKENIZER_FILE
    if isinstance(tokenizer, CodeTokenizer):
        _atomic_write(target, lambda p: tokenizer.tok.save(str(p)))
    elif isinstance(tokenizer, Tokenizer):
        _atomic_write(target, lambda p: tokenizer.save(str(p)))
    else:
        src = Path(tokenizer)
        if not src.is_file():
            raise CheckpointError(f"{src}: tokenizer file not found")
        if not (target.exists() and target.resolve() == src.resolve()):
            _atomic_write(target, lambda p: shutil.copyfile(src, p))
    return out
