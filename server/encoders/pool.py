"""The encoders of the models in use: each collection searches with its own model, so several may be needed at once.

Each model is loaded once; two names of one checkpoint (a hub id and a copy in a folder) share one encoder, found by
the checkpoint's identity; at most `capacity` distinct models stay loaded, the least recently used dropped first (a
job still holding a dropped encoder finishes with it).
"""

import threading
from collections import OrderedDict
from collections.abc import Callable

from server.encoders.protocol import Encoder

MAX_LOADED_MODELS = 2  # a ViT-B/32 takes ~0.6 GB, a SigLIP 2 base ~1.5 GB of memory


class EncoderPool:
    """Encoders by (model name, precision); `make(model, precision)` makes a missing one."""

    def __init__(self, make: Callable[[str, str], Encoder], capacity: int = MAX_LOADED_MODELS) -> None:
        self._make = make
        self._capacity = max(1, capacity)
        self._names: dict[tuple[str, str], Encoder] = {}
        self._recent: OrderedDict[int, Encoder] = OrderedDict()  # distinct encoders, least recently used first
        self._lock = threading.Lock()

    def add(self, encoder: Encoder, name: str | None = None) -> None:
        """Use `encoder` for its model, or for `name` (another name of the same checkpoint), at its precision."""
        with self._lock:
            self._remember((name or encoder.model_name, encoder.precision), encoder)

    def get(self, model: str, precision: str = "fp32") -> Encoder:
        """The encoder of `model` (a hub id or a folder) at `precision`, made on first use; its weights load when
        first needed."""
        key = (model, precision)
        with self._lock:
            known = self._names.get(key)
            if known is not None:
                self._recent.move_to_end(id(known))
                return known
        made = self._make(model, precision)
        identity = made.model_identity  # finds (or downloads) the files, outside the lock: it may take a while
        with self._lock:
            known = self._names.get(key)
            if known is None:
                same = [e for e in self._recent.values() if (e.model_identity, e.precision) == (identity, precision)]
                known = same[0] if same else made
                self._remember(key, known)
            return known

    def loaded(self) -> list[str]:
        """The model names served now, most recently used last."""
        with self._lock:
            order = list(self._recent)
            names = [name for name, _ in sorted(self._names, key=lambda key: order.index(id(self._names[key])))]
            return [name for i, name in enumerate(names) if name not in names[i + 1 :]]

    def _remember(self, key: tuple[str, str], encoder: Encoder) -> None:
        self._names[key] = encoder
        self._recent[id(encoder)] = encoder
        self._recent.move_to_end(id(encoder))
        while len(self._recent) > self._capacity:
            _, dropped = self._recent.popitem(last=False)
            for stale in [k for k, e in self._names.items() if e is dropped]:
                del self._names[stale]
