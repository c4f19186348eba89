"""clipsearch: cross-modal image search (CLIP + FAISS) over a person's own photos."""

__version__ = "0.1.0"
