"""Load and save Quiet-STaR checkpoints (our format and the released quietstar-8-ahead layout).

Our format (a directory): the backbone's HF files (config.json, model.safetensors, tokenizer with
the two meta-tokens), `quietstar_config.json` and `quietstar.safetensors` (the Quiet-STaR tensors
under the official names `start_embedding`, `end_embedding`, `talk_head.0.{0,2,4}.*`).
The release keeps those tensors inside its Mistral shards (spec §5.3); the fixes of spec §5.5
apply: trained meta vectors are never re-initialised and a trained head is never zeroed.
`talk_head.*` <-> `mixing_head.net.*` renaming happens here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import staging_dir
from .config import CONFIG_FILE, TENSORS_FILE, QuietStarConfig
from .dtypes import resolve_dtype
from .llama import SUPPORTED_MODEL_TYPES, LlamaBackbone
from .model import QuietStarModel

log = logging.getLogger(__name__)

QUIETSTAR_KEYS = ("start_embedding", "end_embedding")
TALK_PREFIX, MIXING_PREFIX = "talk_head.0.", "mixing_head.net."
# Keys some HF checkpoints carry that hold no weights we need.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# spec §5.2: config keys that mark the official patched-Mistral release.
RELEASE_CONFIG_KEYS = ("use_concat_talk_head", "use_weighted_talk_head", "use_complex_talk_head")


def is_quietstar_key(key: str) -> bool:
    return key in QUIETSTAR_KEYS or key.startswith(TALK_PREFIX)


def to_internal(key: str) -> str:
    return MIXING_PREFIX + key[len(TALK_PREFIX) :] if key.startswith(TALK_PREFIX) else key


def to_official(key: str) -> str:
    return TALK_PREFIX + key[len(MIXING_PREFIX) :] if key.startswith(MIXING_PREFIX) else key


# ---------------------------------------------------------------- reading


def read_hf_config(directory: Path):
    from transformers import AutoConfig

    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from e
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not supported; Llama-family architectures only "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    try:
        return AutoConfig.from_pretrained(str(directory)), raw
    except Exception as e:  # noqa: BLE001 - transformers raises many types for bad configs
        raise ValueError(f"{path}: cannot parse config: {e}") from e


def weight_files(directory: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it (single file or sharded index)."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: malformed index ({e})") from e
        files = {key: directory / name for key, name in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise ValueError(f"{index}: shard {path.name} is missing")
        return files
    if single.is_file():
        return weight_files_of(single)
    raise ValueError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _read_tensors(files: dict[str, Path], keys: list[str]) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    out = {}
    for path, file_keys in by_file.items():
        try:
            with safe_open(path, "pt") as f:
                for key in file_keys:
                    out[key] = f.get_tensor(key)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: cannot read tensors: {e}") from e
    return out


def _copy_checked(param: torch.Tensor, value: torch.Tensor, key: str, path: Path) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(
            f"{path}: tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def load_backbone(directory: Path, dtype: torch.dtype, device) -> tuple[LlamaBackbone, dict]:
    """Build the backbone from config.json and fill it from the safetensors (strict)."""
    hf_config, raw_config = read_hf_config(directory)
    files = weight_files(directory)
    with torch.device("meta"):
        backbone = LlamaBackbone(hf_config)
    backbone.to_empty(device=device)
    backbone.to(dtype)
    backbone.tie_weights()
    backbone.rotary.__init__(hf_config)  # buffers computed on the meta device are lost
    backbone.rotary.to(device)
    expected = backbone.hf_state_dict_keys()
    params = dict(backbone.named_parameters(remove_duplicate=False))
    missing = [ckpt for ckpt in expected.values() if ckpt not in files]
    if missing:
        raise ValueError(
            f"{directory}: missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}"
        )
    unexpected = [
        k
        for k in files
        if k not in set(expected.values())
        and not is_quietstar_key(k)
        and not k.endswith(IGNORED_SUFFIXES)
        and not (k == "lm_head.weight" and "lm_head.weight" not in expected)
    ]
    if unexpected:
        raise ValueError(
            f"{directory}: unexpected tensors {unexpected[:5]} (not a {hf_config.model_type} checkpoint?)"
        )
    tensors = _read_tensors(files, list(expected.values()))
    for name, key in expected.items():
        _copy_checked(params[name], tensors[key], key, files[key])
    return backbone, {"files": files, "raw_config": raw_config, "directory": directory}


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{directory}: cannot load tokenizer: {e}") from e


def _ensure_meta_tokens(backbone: LlamaBackbone, tokenizer, qconfig: QuietStarConfig) -> None:
    """Add the meta-token strings if the tokenizer lacks them, growing the vocab to match."""
    wanted = [qconfig.start_thought_token, qconfig.end_thought_token]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    rows = backbone.embed_tokens.weight.shape[0]
    if len(tokenizer) > rows:
        _grow_vocab(backbone, len(tokenizer), _dash_id(tokenizer))


def _grow_vocab(backbone: LlamaBackbone, rows: int, fill_id: int) -> None:
    """New embedding rows copy the '---' row (harmless as inputs; masked as outputs)."""
    old = backbone.embed_tokens.weight
    new = torch.nn.Embedding(rows, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        new.weight[: old.shape[0]] = old
        new.weight[old.shape[0] :] = old[fill_id]
    tied = backbone.lm_head.weight is old
    backbone.embed_tokens = new
    if tied:
        backbone.lm_head.weight = new.weight
    else:
        head = torch.nn.Linear(old.shape[1], rows, bias=False, device=old.device, dtype=old.dtype)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[: backbone.lm_head.weight.shape[0]] = backbone.lm_head.weight
        backbone.lm_head = head
    backbone.config.vocab_size = rows


def _dash_id(tokenizer) -> int:
    """spec §1.2: the first sub-token of '---'."""
    return tokenizer.encode("---", add_special_tokens=False)[0]


def _qconfig_for(
    directory: Path, raw_config: dict, files: dict[str, Path]
) -> tuple[QuietStarConfig, str]:
    if (directory / CONFIG_FILE).is_file():
        return QuietStarConfig.load(directory), "quietstar"
    if all(k in raw_config for k in RELEASE_CONFIG_KEYS):
        # spec §5.2: n_ahead, scale and strings are not in the release config; hard-code them.
        return QuietStarConfig(
            n_ahead=8,
            mixing_head_hidden=_release_head_width(directory, files),
            heads_trained=True,
            provenance={"source": "ezelikman/quietstar-8-ahead layout"},
        ), "release"
    return QuietStarConfig(), "plain"


def _release_head_width(directory: Path, files: dict[str, Path]) -> int:
    """spec §5.3: talk_head.0.0.weight is (hidden, 2d); read the width instead of assuming d."""
    key = TALK_PREFIX + "0.weight"
    if key not in files:
        raise ValueError(
            f"{directory}: config.json has the Quiet-STaR release keys but no {key!r} tensor"
        )
    try:
        with safe_open(files[key], "pt") as f:
            return int(f.get_slice(key).get_shape()[0])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{files[key]}: cannot read tensor {key!r}: {e}") from e


def load(
    path: str | os.PathLike = "default",
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "cpu",
    heads: str | os.PathLike | None = None,
    quantize: str | None = None,
    quantize_group_size: int = 32,
) -> QuietStarModel:
    """Load `default`, one of our checkpoints, the release layout, or a plain HF Llama-family
    model (fresh heads, w == 0). The tokenizer is attached as `model.tokenizer`.

    `dtype`: the backbone's dtype, or `auto` (`quietstar.dtypes.resolve_dtype`: bf16 where the
    device runs it natively, fp32 on CPUs that emulate bf16); the choice and why is logged and
    kept as `model.dtype_choice`. The mixing head always stays fp32.

    `heads`: a directory with `quietstar_config.json` + `quietstar.safetensors` whose Quiet-STaR
    tensors replace the checkpoint's own. `default` uses the heads shipped with the package, when
    there are any (`quietstar/default_heads/`).

    `quantize`: "int8", "int4" (groups of `quantize_group_size`) or "q4_1" makes an
    inference-only model with quantised backbone linears (quietstar/quant.py); None keeps full
    precision."""
    spec = None
    if quantize is not None:
        from .quant import QuantSpec

        spec = QuantSpec(quantize, quantize_group_size)  # validate before the slow load
    if str(path) == "default":
        from .default_model import bundled_default_heads, default_model_dir

        directory = default_model_dir()
        heads = heads or bundled_default_heads()
    else:
        directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such model directory")
    choice = resolve_dtype(dtype, device, quantize=quantize)
    if choice.requested == "auto":
        log.info("dtype auto -> %s (%s)", choice.name, choice.reason)
    backbone, info = load_backbone(directory, choice.dtype, torch.device(device))
    tokenizer = load_tokenizer(directory)
    if heads is not None:
        directory = Path(heads)
        if not (directory / CONFIG_FILE).is_file():
            raise ValueError(f"{directory}: no {CONFIG_FILE} (not a Quiet-STaR heads directory)")
    qconfig, kind = _qconfig_for(directory, info["raw_config"], info["files"])
    _ensure_meta_tokens(backbone, tokenizer, qconfig)
    start_id = tokenizer.convert_tokens_to_ids(qconfig.start_thought_token)
    end_id = tokenizer.convert_tokens_to_ids(qconfig.end_thought_token)
    model = QuietStarModel(backbone, qconfig, start_id, end_id).to(device)
    model.tokenizer = tokenizer
    model.source = str(info["directory"])
    model.dtype_choice = choice
    tensors, sources = _quietstar_tensors(directory, kind, info["files"])
    if tensors:
        _load_quietstar_tensors(model, tensors, sources, directory)
    else:
        model.init_meta_vectors(_dash_id(tokenizer))
        if qconfig.heads_trained:
            raise ValueError(
                f"{directory}: config says heads are trained but no Quiet-STaR tensors found"
            )
        log.warning(
            "%s has no Quiet-STaR tensors: fresh heads (w == 0, thoughts change nothing "
            "until trained)",
            directory,
        )
    model.eval()
    if spec is not None:
        from .quant import quantize_model

        quantize_model(model, spec)
    return model


def _quietstar_tensors(directory: Path, kind: str, files: dict[str, Path]):
    """-> (official key -> tensor, official key -> the file holding it)."""
    if kind == "quietstar":
        path = directory / TENSORS_FILE
        if not path.is_file():
            raise ValueError(f"{directory}: {CONFIG_FILE} present but {TENSORS_FILE} missing")
        files = weight_files_of(path)
        return _read_tensors(files, list(files)), files
    keys = [k for k in files if is_quietstar_key(k)]
    return (_read_tensors(files, keys) if keys else {}), files


def weight_files_of(path: Path) -> dict[str, Path]:
    try:
        with safe_open(path, "pt") as f:
            return dict.fromkeys(f.keys(), path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: unreadable safetensors file: {e}") from e


def _load_quietstar_tensors(
    model: QuietStarModel, tensors: dict, sources: dict[str, Path], directory: Path
) -> None:
    params = dict(model.named_parameters())
    wanted = {n for n in params if n in QUIETSTAR_KEYS or n.startswith(MIXING_PREFIX)}
    got = {to_internal(k): v for k, v in tensors.items()}
    missing, extra = sorted(wanted - set(got)), sorted(set(got) - wanted)
    if missing or extra:
        raise ValueError(
            f"{directory}: Quiet-STaR tensors do not match: missing "
            f"{[to_official(k) for k in missing]}, unexpected {[to_official(k) for k in extra]}"
        )
    for name in wanted:
        _copy_checked(params[name], got[name], to_official(name), sources[to_official(name)])


# ---------------------------------------------------------------- writing


def quietstar_state_dict(model: QuietStarModel) -> dict[str, torch.Tensor]:
    """The Quiet-STaR tensors under their official names."""
    return {
        to_official(name): p.detach().contiguous()
        for name, p in model.named_parameters()
        if name in QUIETSTAR_KEYS or name.startswith(MIXING_PREFIX)
    }


def backbone_state_dict(backbone: LlamaBackbone) -> dict[str, torch.Tensor]:
    if backbone.is_fused:
        raise ValueError("this model's projections were fused for inference; it cannot be saved")
    params = dict(backbone.named_parameters(remove_duplicate=False))
    return {
        key: params[name].detach().contiguous()
        for name, key in backbone.hf_state_dict_keys().items()
    }


def save(
    model: QuietStarModel, directory: str | os.PathLike, config: QuietStarConfig | None = None
) -> Path:
    """Write a complete checkpoint atomically (a temp dir in the same parent, then a rename)."""
    directory = Path(directory)
    tmp = staging_dir(directory)
    try:
        write_files(model, tmp, config or model.config)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old target is renamed aside first and deleted afterwards, so a
    reader never sees a half-deleted checkpoint (deleting in place was not atomic)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_files(model: QuietStarModel, directory: Path, config: QuietStarConfig) -> None:
    backbone = model.backbone
    backbone.config.save_pretrained(str(directory))
    save_file(
        backbone_state_dict(backbone),
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    config.save(directory)
    save_file(quietstar_state_dict(model), str(directory / TENSORS_FILE), metadata={"format": "pt"})
