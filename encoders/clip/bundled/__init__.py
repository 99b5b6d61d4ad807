"""Models shipped inside the package so Loupe can run with no network at all.

`tiny-clip/` is a small open_clip CLIP trained by `train_tiny_clip` on the synthetic
world in `shapes`; load it with `open_clip.create_model_and_transforms("local-dir:<path>")`.
"""
