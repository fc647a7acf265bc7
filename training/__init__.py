"""Training recipes: fine-tuning the embedder and the LoRA generator adapter. Uses ``core`` and ``retrieval``."""
