"""Retrieval: document loading, chunking, embedding, the persistent FAISS index and search.
Depends only on ``core``."""
