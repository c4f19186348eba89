"""The moments of a video that `read_video` samples, chosen over the frames `video.Decoder` serves.

Targets every `every_seconds` from 0 (or, where that would pass `max_frames`, `max_frames` targets spread
evenly over the duration). Each target is served by the keyframe at or before it: one seek, one packet decoded and
drained at once. Where keyframes are further apart than the targets, the frames between are decoded forward from
the keyframe (continuing, not seeking back, for the next target in the same group of pictures). Scene changes are
then looked for between neighbouring samples whose 16x16 colour thumbnails differ by more than `scene_threshold`
(mean absolute difference, 0-1): the keyframes between them are bisected and the first keyframe of each new scene
is added, while samples stay under `max_frames`. Near-black frames (no thumbnail pixel above 24) are not kept: a
black fade-in gives way to the first frame near the start that is not black; a video black throughout keeps its
first frame. A file without an index of its keyframes (a browser's WebM recording) is read in one pass, keyframes
only."""

from __future__ import annotations

import bisect
import itertools
import math
from typing import TYPE_CHECKING

from server.images.video_probe import frames_per_second

if TYPE_CHECKING:
    from server.images.video import Decoder, Sample
    from server.images.video_probe import KeyframeIndex

FADE_WINDOW_SECONDS = 3.0  # how far into the video a black start looks for its first real frame
FADE_STEP_SECONDS = 0.25


class Sampler:
    """The samples of one video, chosen as the module says; `samples` holds those found so far (kept when the
    decoding budget runs out)."""

    def __init__(self, decoder: Decoder, index: KeyframeIndex, every: float, max_frames: int, threshold: float) -> None:
        self.decoder, self.index = decoder, index
        self.every, self.max_frames, self.threshold = every, max_frames, threshold
        self.samples: list[Sample] = []

    def run(self, duration: float | None) -> list[Sample]:
        if duration is None or not self.index.covers(duration):
            self._one_pass()
            return self.samples
        count = math.ceil(duration / self.every)
        dense = count <= self.max_frames
        targets = (
            [i * self.every for i in range(count)]
            if dense
            else [i * duration / self.max_frames for i in range(self.max_frames)]
        )
        keyframes = self.index.keyframes()
        for target in targets:
            sample = self._at(target, keyframes)
            if sample is not None and (not self.samples or sample.time > self.samples[-1].time):
                self.samples.append(sample)
            if target == 0 and self.samples and self.samples[0].black:
                self._past_black_start(keyframes)
        if dense and keyframes is not None:
            self._scene_changes(keyframes)
        self.samples.sort(key=lambda s: s.time)
        return self.samples

    def _at(self, target: float, keyframes: list[float] | None) -> Sample | None:
        """The keyframe at or before `target` if newer than the last sample, else the frame at `target` decoded
        forward (keyframes further apart than the targets); None where the last sample is close enough."""
        last = self.samples[-1].time if self.samples else -math.inf
        if target - last < self.every / 2:
            return None  # a fade-in's replacement, or a late keyframe, already stands for this target
        before = _latest(keyframes, target) if keyframes is not None else None
        if before is not None and before <= last + 1e-3:
            return self.decoder.forward(target)
        sample = self.decoder.keyframe(target)
        if sample is not None and sample.time <= last + 1e-3:
            return self.decoder.forward(target)
        return sample

    def _past_black_start(self, keyframes: list[float] | None) -> None:
        """A black first frame (a fade-in): the first frame within a few seconds that is not black replaces it."""
        window = FADE_WINDOW_SECONDS
        candidates = [k for k in keyframes if 0 < k <= window] if keyframes is not None else []
        for time in candidates:
            sample = self.decoder.keyframe(_towards_next(keyframes or [], time))
            if sample is not None and not sample.black and sample.time > 0:
                self.samples[0] = sample
                return
        if candidates:
            return  # black at every keyframe of the first seconds: the frames between will be too
        step = FADE_STEP_SECONDS
        for i in range(1, int(window / step) + 1):
            sample = self.decoder.forward(i * step)
            if sample is None:
                return
            if not sample.black:
                self.samples[0] = sample
                return

    def _scene_changes(self, keyframes: list[float]) -> None:
        for left, right in itertools.pairwise(list(self.samples)):
            if len(self.samples) >= self.max_frames:
                return
            if left.differs(right, self.threshold):
                self._bisect(left, right, keyframes)

    def _bisect(self, left: Sample, right: Sample, keyframes: list[float]) -> list[Sample]:
        """Adds (and returns) the first keyframe of each scene that begins between two samples that differ."""
        # The index's times are decoding times, a frame or two before the shown ones: keyframes that close to a
        # sample are the sample itself.
        slack = 1.5 / (frames_per_second(self.decoder.stream) or 30)
        between = [k for k in keyframes if left.time + slack < k < right.time - slack]
        if not between or len(self.samples) >= self.max_frames:
            return []
        sample = self.decoder.keyframe(_towards_next(keyframes, between[len(between) // 2]))
        if sample is None or not left.time < sample.time < right.time:
            return []
        found = self._bisect(left, sample, keyframes) if left.differs(sample, self.threshold) else []
        previous = found[-1] if found else left
        if previous.differs(sample, self.threshold) and not sample.black and len(self.samples) < self.max_frames:
            found.append(sample)
            self.samples.append(sample)
        if sample.differs(right, self.threshold):
            found.extend(self._bisect(sample, right, keyframes))
        return found

    def _one_pass(self) -> None:
        """No index or no duration: every keyframe is seen once; kept at scene changes and every `every`."""
        previous: Sample | None = None
        for sample in self.decoder.keyframes_in_one_pass(min_gap=self.every / 4):
            last = self.samples[-1] if self.samples else None
            if last is not None and last.black and not sample.black and len(self.samples) == 1:
                self.samples[0] = sample  # past a black start
            elif (
                last is None
                or sample.time >= last.time + self.every - 1e-3
                or (previous is not None and previous.differs(sample, self.threshold))
            ) and (last is None or sample.time > last.time):
                self.samples.append(sample)
            previous = sample
            if len(self.samples) >= self.max_frames:
                return


def _towards_next(keyframes: list[float], time: float) -> float:
    """Where to seek for the keyframe listed at `time`: half-way to the next one, as the index's times are decoding
    times, up to a few frames before the keyframe is shown (a seek to the listed time lands on the one before)."""
    position = bisect.bisect_right(keyframes, time + 1e-3)
    after = keyframes[position] if position < len(keyframes) else time + 1.0
    return (time + after) / 2


def _latest(times: list[float], target: float) -> float | None:
    position = bisect.bisect_right(times, target + 1e-3)
    return times[position - 1] if position else None


def without_black(samples: list[Sample]) -> list[Sample]:
    kept = [s for s in samples if not s.black]
    return kept or samples[:1]
