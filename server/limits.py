"""Defaults and limits of the public API, shared by the core and both adapters.

Kept free of heavy imports so the MCP server can describe its tools before numpy, PIL or torch are loaded.
"""

DEFAULT_COLLECTION = "default"
DEFAULT_KS = (1, 3, 5, 10)
DEFAULT_TEMPLATE = "a photo of a {label}"
MAX_K = 1000
MAX_QUERY_CHARS = 2000
INDEX_TYPES = ("auto", "flat", "ivf")
MAX_COMPARED = 5  # collections compared side by side in one evaluation
GALLERY_SIDES = (64, 512)  # a gallery thumbnail's longest side, least and most, in pixels
GALLERY_MAX_PATHS = 48  # thumbnails per get_thumbnails call
