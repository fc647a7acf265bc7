"""Evaluation: compares prompt-only, RAG-only, FT-only and combined systems and writes reports.
Uses ``core`` and ``retrieval``."""
