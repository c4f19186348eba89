"""Image files: which files are images, decoding to upright RGB (`decode`), capture metadata (`metadata`), perceptual
fingerprints (`fingerprint`) and gallery thumbnails (`thumbnails`). Imports only the bottom layer."""
