"""Vision-language models, prompts, guardrails and the Ask pipeline."""
