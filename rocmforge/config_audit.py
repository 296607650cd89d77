"""Nothing in a model's config changes the forward pass silently.

Every HF config key of a class an architecture claims is, in the recipe's
``config`` section (or this module's list of keys no causal forward reads):

  honoured  read by an hparam (any ``hf:`` path starting with it) or named in ``honours``
  inert     cannot change the logits (``inert``: token ids, dropout, training-only settings)
  refused   ``refuses: {key: accepted value(s)}``: loading a file with another value is an error

GGUF files get the same treatment for their ``{arch}.*`` keys: an hparam's
``gguf:`` key, ``gguf_inert``, or ``gguf_refuses``. tests/test_config_audit.py
enumerates transformers' config classes and the keys llama.cpp's converter
writes, so a new key fails a test rather than a user's output.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import ModelFormatError
from .schema import Recipe

log = logging.getLogger(__name__)

# Keys that never change a causal LM's logits, whatever the architecture.
GENERIC_INERT_HF = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "initializer_factor", "use_cache", "tie_word_embeddings",   # the map's tied_to
    "attention_dropout", "hidden_dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop", "summary_first_dropout",
    "output_router_logits", "router_aux_loss_coef", "router_z_loss_coef", "router_jitter_noise",
    "max_position_embeddings",       # honoured as context_length where a recipe reads it
    "transformers_version", "dtype", "torch_dtype", "architectures", "model_type", "_name_or_path",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
    "is_encoder_decoder", "chunk_size_feed_forward", "pretraining_tp",
})
GENERIC_INERT_GGUF_SUFFIXES = ("context_length",)
_MISSING = object()


def honoured_hf(recipe: Recipe) -> set[str]:
    keys = {path.split(".")[0] for hp in recipe.hparams.values() for path in hp.hf}
    return keys | set(recipe.config.get("honours", []))


def honoured_gguf(recipe: Recipe, arch: str) -> set[str]:
    return {k.replace("{arch}", arch) for hp in recipe.hparams.values() for k in hp.gguf}


def unaccounted_hf(recipe: Recipe, keys: set[str]) -> list[str]:
    """Config keys the recipe neither honours, calls inert, nor refuses."""
    known = honoured_hf(recipe) | set(recipe.config.get("inert", [])) | set(recipe.config.get("refuses", {}))
    return sorted(k for k in keys if k not in known and k not in GENERIC_INERT_HF)


def unaccounted_gguf(recipe: Recipe, arch: str, keys: set[str]) -> list[str]:
    """``{arch}.*`` metadata keys the recipe neither honours, calls inert, nor refuses."""
    known = honoured_gguf(recipe, arch)
    known |= {k.replace("{arch}", arch) for k in recipe.config.get("gguf_inert", [])}
    known |= {k.replace("{arch}", arch) for k in recipe.config.get("gguf_refuses", {})}
    return sorted(k for k in keys if k.startswith(arch + ".") and k not in known
                  and not k.endswith(GENERIC_INERT_GGUF_SUFFIXES))


def _lookup(config: dict, path: str) -> Any:
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _accepted(value: Any, accepted: Any) -> bool:
    options = accepted if isinstance(accepted, list) else [accepted]
    return any(value == a for a in options)


def check_config(recipe: Recipe, fmt: str, metadata: dict, where: str) -> None:
    """Refuse a file whose config sets a refused key to a value the recipe does not implement."""
    if fmt == "gguf":
        arch = str(metadata.get("general.architecture", ""))
        refuses = {k.replace("{arch}", arch): v for k, v in recipe.config.get("gguf_refuses", {}).items()}
        config = metadata
        unknown = unaccounted_gguf(recipe, arch, set(metadata))
        if unknown:
            log.warning("%s: metadata keys the %s recipe does not read: %s", where, recipe.name, ", ".join(unknown))
    else:
        refuses = recipe.config.get("refuses", {})
        config = {**metadata, **metadata["text_config"]} if isinstance(metadata.get("text_config"), dict) else metadata
    for key, accepted in refuses.items():
        value = _lookup(config, key)
        if value is _MISSING or value is None or _accepted(value, accepted):
            continue
        shown = accepted if isinstance(accepted, list) else [accepted]
        raise ModelFormatError(f"{where}: {key} = {value!r} is not supported by the {recipe.name} recipe "
                               f"({recipe.file}); it implements {key} = {' or '.join(repr(a) for a in shown)}")
