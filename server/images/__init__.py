"""Image files: which files are images, decoding to upright RGB (`decode`), capture metadata (`metadata`), perceptual
fingerprints (`fingerprint`), gallery thumbnails (`thumbnails`) and video files sampled into upright frames at known
times with their container's metadata (`video`). Imports only the bottom layer."""
