"""The recommended models: what each is, what it costs, its published quality figures (with their sources) and
whether it is already downloaded. Figures are as published, not measured here (random weights are used here).

XM3600: immich's multilingual benchmark, mean of R@1/5/10 for text→image retrieval on Crossmodal-3600 (English
captions unless a language is named), measured with open_clip/ONNX exports; immich-app/immich
docs/docs/features/searching.md. COCO: text→image R@1 on MS-COCO 5k; for CLIP and SigLIP 1 from open_clip's
docs/openclip_retrieval_results.csv, for SigLIP 2 from big_vision's README_siglip2.md (column "COCO T→I").
"""

from dataclasses import dataclass

from server.errors import ModelUnavailable
from server.models.files import find_local
from server.results import Figure, ModelInfo, ModelList

IMMICH = "immich docs/docs/features/searching.md (XM3600)"
OPEN_CLIP = "open_clip docs/openclip_retrieval_results.csv"
BIG_VISION = "big_vision configs/proj/image_text/README_siglip2.md"


@dataclass(frozen=True)
class _Entry:
    model: str
    family: str
    languages: str
    parameters_m: int
    download_mb: int
    download_estimated: bool
    dim: int
    image_size: int
    figures: tuple[tuple[str, float, str], ...]
    advice: str


RECOMMENDED: tuple[_Entry, ...] = (
    _Entry(
        "openai/clip-vit-base-patch32", "CLIP", "English", 151, 605, False, 512, 224,
        (("XM3600 English", 59.37, IMMICH), ("COCO text→image R@1", 30.44, OPEN_CLIP)),
        "Default: the paper's model; small and fast.",
    ),
    _Entry(
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "CLIP", "English", 151, 605, True, 512, 224,
        (("XM3600 English", 68.78, IMMICH), ("COCO text→image R@1", 39.34, OPEN_CLIP)),
        "Smallest and fastest with the default: the same size and speed, better on every published figure.",
    ),
    _Entry(
        "openai/clip-vit-large-patch14", "CLIP", "English", 428, 1710, False, 768, 224,
        (("XM3600 English", 60.12, IMMICH), ("COCO text→image R@1", 36.51, OPEN_CLIP)),
        "Large and slow (8.8× the default's time per image in immich's figures) for little gain; prefer SigLIP 2.",
    ),
    _Entry(
        "google/siglip-base-patch16-224", "SigLIP", "English", 203, 813, False, 768, 224,
        (("XM3600 English", 71.64, IMMICH), ("COCO text→image R@1", 47.78, OPEN_CLIP)),
        "Good English quality at a moderate size.",
    ),
    _Entry(
        "google/siglip-base-patch16-256-multilingual", "SigLIP", "multilingual", 371, 1480, False, 768, 256,
        (
            ("XM3600 English", 69.38, IMMICH),
            ("XM3600 Chinese", 66.87, IMMICH),
            ("XM3600 Japanese", 61.48, IMMICH),
            ("COCO text→image R@1", 44.92, OPEN_CLIP),
        ),
        "Best multilingual for Chinese, Japanese, Arabic and Hindi queries.",
    ),
    _Entry(
        "google/siglip2-base-patch16-224", "SigLIP 2", "multilingual", 375, 1500, True, 768, 224,
        (
            ("XM3600 English", 75.19, IMMICH),
            ("XM3600 German", 86.44, IMMICH),
            ("XM3600 Chinese", 64.39, IMMICH),
            ("COCO text→image R@1", 52.1, BIG_VISION),
        ),
        "Best English quality for a CPU, and best multilingual for European languages.",
    ),
    _Entry(
        "google/siglip2-base-patch16-256", "SigLIP 2", "multilingual", 375, 1500, True, 768, 256,
        (("COCO text→image R@1", 53.2, BIG_VISION),),
        "As siglip2-base-patch16-224 at 256 px: a little better on COCO, with 1.3× the image patches to compute.",
    ),
    _Entry(
        "google/siglip2-base-patch32-256", "SigLIP 2", "multilingual", 377, 1510, True, 768, 256,
        (("XM3600 English", 73.15, IMMICH), ("COCO text→image R@1", 47.2, BIG_VISION)),
        "Most of SigLIP 2's quality at 1.5× the default's time per image (immich's figures; 32 px patches).",
    ),
    _Entry(
        "facebook/metaclip-2-worldwide-b32", "MetaCLIP 2", "multilingual (300+ languages)", 600, 2400, True, 512, 224,
        (),
        "Multilingual CLIP trained on worldwide data; no per-checkpoint retrieval figure is published yet. "
        "Licence: CC-BY-NC.",
    ),
)  # fmt: skip


def list_models(default: str) -> ModelList:
    """The recommended models, each marked downloaded when its files are complete in the local cache."""
    return ModelList(
        default=default,
        models=[
            ModelInfo(
                model=e.model,
                family=e.family,
                languages=e.languages,
                parameters_m=e.parameters_m,
                download_mb=e.download_mb,
                download_estimated=e.download_estimated,
                dim=e.dim,
                image_size=e.image_size,
                figures=[Figure(metric=m, value=v, source=s) for m, v, s in e.figures],
                advice=e.advice,
                downloaded=_downloaded(e.model),
            )
            for e in RECOMMENDED
        ],
    )


def _downloaded(model: str) -> bool:
    try:
        return find_local(model) is not None
    except ModelUnavailable:  # an unreadable cache is "not downloaded" here; loading the model says why
        return False
