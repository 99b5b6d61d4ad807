"""The model-loading kit that CLIP, Whisper, OCR and the VLMs share.

- `lazy`: `LazyModel`, the load-once, thread-safe base (`load()` calls the `_load()` hook).
- `specs`: parsing a model spec string (bundled, local folder or file, hub id, arch/tag).
- `hub`: is the Hugging Face hub reachable (bounded lookup, HF_ENDPOINT, HF_HUB_OFFLINE).
- `runtime`: device, precision and threads, decided in one place.
- `registry`: named backends, listed by name in their error.
"""
