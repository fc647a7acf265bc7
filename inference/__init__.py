"""Generation engines on a floor of their own: the transformers + peft engine, the llama.cpp continuous
batcher (with its weights and GGUF LoRA export), the refusal gate, the backends the service and evaluation
talk to, and :func:`inference.loader.load_engine`, the one place an engine is chosen."""
