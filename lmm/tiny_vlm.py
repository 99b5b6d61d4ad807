"""A tiny, randomly initialised vision-language model built locally, for tests and offline runs.

It has SmolVLM's architecture (Idefics3: a SigLIP-style vision tower, a pixel-shuffle connector
and a Llama text model) at toy size, with a byte-level tokenizer built here, and is saved as an
ordinary transformers folder. It loads back through the same code path as real weights
(`AutoProcessor.from_pretrained` + `AutoModelForImageTextToText.from_pretrained`), so the
transformers backend is exercised end to end without a download. Its answers are noise.

    python -m lmm.tiny_vlm OUT_DIR        build it into OUT_DIR (a few hundred KB)

Built deterministically: the same seed gives the same weights and the same generations.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the saved layout or config changes; cached copies with another value are rebuilt.
BUILD_VERSION = 1
MARKER = "loupe_tiny_vlm.json"
MODEL_ID = "bundled:tiny-vlm (random weights)"

# SmolVLM's chat template (Idefics3 processor): "User:<image>text<end_of_utterance>\nAssistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Tokens the Idefics3 processor and chat template look up by name.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


@dataclass(frozen=True)
class TinyVlmConfig:
    # Seed for every random weight; same seed, same model.
    seed: int = 1234
    # Vision tower: square input side in pixels, patch side, width, depth, heads.
    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    # Pixel-shuffle factor of the connector (Idefics3 default 2): image tokens = (64/16)^2 / 2^2 = 4.
    scale_factor: int = 2
    # Text model (Llama): width, depth, heads, key/value heads.
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    # Longest edge images are resized to before splitting into image_size tiles (here up to 2x2 + global).
    longest_edge: int = 128
    # Rotary positions only: this costs no parameters.
    max_positions: int = 8192


def build_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) plus the special tokens Idefics3 needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    raw = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=8192,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    missing = [
        t
        for t in SPECIAL_TOKENS
        if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id) and t != "<|endoftext|>"
    ]
    if missing:
        raise RuntimeError(f"tiny tokenizer lacks special tokens {missing}")
    return tokenizer


def build(out_dir: str | os.PathLike, config: TinyVlmConfig = TinyVlmConfig()) -> Path:
    """Build the tiny model, its processor and generation config into `out_dir` (created or replaced)."""
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": config.longest_edge},
        max_image_size={"longest_edge": config.image_size},
        do_image_splitting=True,
    )
    image_seq_len = (config.image_size // config.patch_size) ** 2 // config.scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE
    )

    vocab_size = _round_up(len(tokenizer), 64)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model_config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=config.scale_factor,
        pad_token_id=pad_id,
        vision_config={
            "hidden_size": config.vision_hidden,
            "intermediate_size": 2 * config.vision_hidden,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.vision_heads,
            "image_size": config.image_size,
            "patch_size": config.patch_size,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": config.text_hidden,
            "intermediate_size": 2 * config.text_hidden,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "num_key_value_heads": config.text_kv_heads,
            "max_position_embeddings": config.max_positions,
            "rms_norm_eps": 1e-5,
            "pad_token_id": pad_id,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "tie_word_embeddings": False,
        },
    )
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
        torch.manual_seed(config.seed)
        model = Idefics3ForConditionalGeneration(model_config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )

    out.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps(
            {"build_version": BUILD_VERSION, "config": asdict(config), "note": "random weights: output is noise"},
            indent=2,
        )
    )
    for path in out.iterdir():  # transformers writes the weights 0600; the cache may be shared
        path.chmod(0o644)
    return out


@contextmanager
def _quiet_progress():
    """No "Writing model shards" bar while building; restores the caller's setting."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def ensure_built(dest: str | os.PathLike, config: TinyVlmConfig = TinyVlmConfig()) -> Path:
    """Return `dest` holding the tiny model, building it first when absent or from another build.

    Built in a temporary sibling folder and renamed into place, so a crash or a concurrent builder
    never leaves a half-written model behind."""
    dest = Path(dest)
    if is_current(dest, config):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by service users
    try:
        build(tmp, config)
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)  # stale build: replaced whole
        try:
            os.replace(tmp, dest)
        except OSError:  # another process renamed its copy first: use it
            if not is_current(dest, config):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def is_current(folder: Path, config: TinyVlmConfig = TinyVlmConfig()) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("build_version") == BUILD_VERSION and marker.get("config") == asdict(config)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m lmm.tiny_vlm OUT_DIR", file=sys.stderr)
        return 2
    out = build(args[0])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"built {MODEL_ID} into {out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
