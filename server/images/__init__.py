"""Image files: which files are images, decoding to upright RGB (`decode`), capture metadata (`metadata`), perceptual
fingerprints (`fingerprint`), gallery thumbnails (`thumbnails`) and video files sampled into upright frames at known
times (`video`), the moments sampled (`video_sampling`), the stream probed before decoding (`video_probe`) and the
container's metadata (`video_metadata`). Imports only the bottom layer."""
