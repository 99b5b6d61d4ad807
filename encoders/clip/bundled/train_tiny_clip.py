"""Train the bundled tiny CLIP on the synthetic shapes world and write it as an open_clip local-dir.

    python -m encoders.clip.bundled.train_tiny_clip [--steps N] [--out DIR] [--seed S]

The model is built through open_clip's own `local-dir:` path (from a config-only folder), trained
with open_clip's ClipLoss, tokenised with open_clip's tokenizer and preprocessed with the model's
own transform, so what ships is exactly what `create_model_and_transforms("local-dir:...")` loads.
The final figures are measured on the float16 weights *after* reloading them from disk, so the
numbers in TRAINING.json are the ones a consumer gets.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

from encoders.clip.bundled.shapes import make_pairs

DEFAULT_OUT = Path(__file__).resolve().parent / "tiny-clip"
EVAL_SEED = 12345  # held out: training batches use seeds >= 1_000_000
EVAL_N = 200

# The 49408-row token embedding dominates the file: at float16 it costs 49408 * 2 bytes per
# unit of text width, so width 48 (~4.7 MB) keeps the folder under 8 MB. Captions need ~12
# tokens; 32 leaves room for user queries without paying for CLIP's 77.
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 4, "mlp_ratio": 4.0},
}
PREPROCESS_CFG = {
    "size": 64,
    "mode": "RGB",
    "mean": list(OPENAI_DATASET_MEAN),
    "std": list(OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def write_config(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load(folder: Path):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model, preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def batch(pairs, preprocess, tokenizer):
    images = torch.stack([preprocess(im) for im, _ in pairs])
    return images, tokenizer([c for _, c in pairs])


@torch.no_grad()
def evaluate(model, preprocess, tokenizer, size: int = 64) -> dict[str, float]:
    """Retrieval over EVAL_N held-out images with distinct captions (pair i is the right answer for i)."""
    model.eval()
    images, texts = batch(make_pairs(EVAL_N, EVAL_SEED, size=size, distinct=True), preprocess, tokenizer)
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(texts, normalize=True)
    sim = txt @ img.T  # rows: captions, columns: images
    truth = torch.arange(EVAL_N)
    rank_t2i = (sim > sim[truth, truth][:, None]).sum(1)  # images scoring above the right one
    rank_i2t = (sim.T > sim[truth, truth][:, None]).sum(1)
    return {
        "t2i_r1": round((rank_t2i < 1).float().mean().item(), 4),
        "t2i_r5": round((rank_t2i < 5).float().mean().item(), 4),
        "i2t_r1": round((rank_i2t < 1).float().mean().item(), 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=900)  # ~12 min on 2 CPU cores
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        # A config-only local dir: open_clip builds a randomly initialised model from it.
        write_config(Path(tmp))
        model, preprocess, tokenizer = load(Path(tmp))

    loss_fn = ClipLoss()
    # No weight decay on gains, biases, embeddings or the temperature, as in open_clip's trainer.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n and "token" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n and "token" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * t))

    losses: list[float] = []
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # Distinct captions per batch: a repeated caption would be a false negative for InfoNCE.
        pairs = make_pairs(args.batch_size, 1_000_000 * (args.seed + 1) + step, distinct=True)
        images, texts = batch(pairs, preprocess, tokenizer)
        img, txt, scale = model(images, texts)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # CLIP's clamp: temperature at most 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  loss {np.mean(losses[-25:]):.4f}  lr {lr_at(step):.2e}  "
                f"scale {scale.item():.1f}  {time.time() - start:.0f}s",
                flush=True,
            )
    train_s = time.time() - start
    print("in-memory float32:", evaluate(model, preprocess, tokenizer), flush=True)

    out = args.out.resolve()
    write_config(out)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    weights = out / "open_clip_model.safetensors"
    save_file(state, str(weights))
    weights.chmod(0o644)  # safetensors writes 0600; a packaged file must be world-readable

    # Reload exactly as a consumer would (float16 on disk, float32 in memory) and measure that.
    model, preprocess, tokenizer = load(out)
    figures = evaluate(model, preprocess, tokenizer)
    figures_224 = evaluate(model, preprocess, tokenizer, size=224)
    print("reloaded from", out, ":", figures, " rendered at 224:", figures_224, flush=True)

    record = {
        "command": f"python -m encoders.clip.bundled.train_tiny_clip --steps {args.steps} --seed {args.seed}",
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.time() - start, 1),
        "final_loss": round(float(np.mean(losses[-25:])), 4),
        "eval": {"seed": EVAL_SEED, "n": EVAL_N, "size_64": figures, "size_224": figures_224},
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    (out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
