"""The gallery in a real browser (headless Chromium) hosted by the official MCP Apps host library: what a person
sees and clicks. Skips with the reason when Chromium, Playwright or the npm package is missing; CI requires them."""

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gallery_host import OUT_DIR, GalleryHost, gallery_host, require_browser, wait_until
from PIL import Image

from bench.video_corpus import PALETTE, planted_scenes, write_video
from conftest import COLORS, save_color
from server.encoders.text_recognition import RecognisedText, TextLine
from server.mcp_server.server import build_server
from server.service import ClipSearch

pytestmark = pytest.mark.anyio

SAMPLES = Path(__file__).parent.parent / "samples"


@pytest.fixture(autouse=True)
def browser_available() -> None:
    require_browser()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three images of each colour, plainly named."""
    folder = tmp_path / "photos"
    for name, rgb in COLORS.items():
        for i in range(3):
            save_color(folder / f"{name}_{i}.jpg", rgb)
    return folder


async def tiles(frame: Any) -> list[dict[str, Any]]:
    """The gallery's tiles in page order: path, visible name, badge, and whether the thumbnail decoded."""
    return await frame.evaluate(
        """() => [...document.querySelectorAll('.tile')].map((t) => ({
            path: t.dataset.path,
            name: t.querySelector('.name').textContent,
            badge: (t.querySelector('.badge') || {}).textContent || null,
            loaded: t.querySelector('img').complete && t.querySelector('img').naturalWidth > 0,
            keeper: t.classList.contains('keeper'),
        }))"""
    )


async def index(host: GalleryHost, folder: Path) -> None:
    done = await host.client.call_tool("index_folder", {"folder": str(folder)})
    assert not done.is_error


async def test_a_search_shows_its_results_as_thumbnails_in_rank_order(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        result = await host.show("search_images_by_text", query="red", k=5)
        frame = await host.ready()
        shown = await tiles(frame)
        title = await frame.text_content("h1")
        errors = host.errors
    expected = [hit["path"] for hit in result.structured_content["results"]]
    assert [t["path"] for t in shown] == expected and len(expected) == 5
    assert [t["badge"] for t in shown] == ["#1", "#2", "#3", "#4", "#5"]
    assert all(t["loaded"] for t in shown)
    assert [t["name"] for t in shown] == [Path(p).name for p in expected]
    assert all(t["name"].startswith("red_") for t in shown[:3])
    assert title == "“red”"
    assert errors == []  # nothing broke, and nothing the default CSP forbids was attempted


async def test_opening_a_result_then_more_like_this_searches_by_that_image_and_back_returns(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        await host.show("search_images_by_text", query="green", k=4, collection="default")
        frame = await host.ready()
        before = [t["path"] for t in await tiles(frame)]
        picked = before[1]
        await frame.focus(".tile >> nth=1")
        await host.page.keyboard.press("Enter")  # keyboard opens it, as a click would
        await frame.wait_for_selector("#viewer:not([hidden])")
        # the larger image (view_image) replaces the thumbnail it opened with
        await wait_until(
            frame, "document.getElementById('viewer-img').src !== document.querySelectorAll('.tile img')[1].src"
        )
        viewer_path = await frame.text_content("#viewer-path")
        await frame.click("#like")
        await wait_until(frame, "!document.getElementById('back').hidden")
        frame = await host.ready()
        after = await tiles(frame)
        calls = await host.calls()
        await frame.click("#back")
        back = [t["path"] for t in await tiles(frame)]
    assert viewer_path == picked
    names = [c["name"] for c in calls]
    assert "view_image" in names
    similar = [c for c in calls if c["name"] == "search_similar_images"]
    assert similar == [
        {"name": "search_similar_images", "arguments": {"collection": "default", "k": 4, "image_path": picked}}
    ]
    assert after[0]["path"] == picked and all(t["loaded"] for t in after)  # the image itself first
    assert back == before


async def test_escape_closes_the_larger_view_and_gives_focus_back_to_the_tile(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        await host.show("search_images_by_text", query="blue", k=3)
        frame = await host.ready()
        await frame.click(".tile >> nth=2")
        await frame.wait_for_selector("#viewer:not([hidden])")
        await host.page.keyboard.press("Escape")
        hidden = await frame.evaluate("document.getElementById('viewer').hidden")
        focused = await frame.evaluate("document.activeElement.dataset.path")
        third = (await tiles(frame))[2]["path"]
    assert hidden and focused == third


async def test_less_like_this_reruns_the_query_without_that_image(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        await host.show("search_images_by_text", query="yellow", k=3)
        frame = await host.ready()
        first = (await tiles(frame))[0]["path"]
        await frame.click(".tile >> nth=0")
        await frame.click("#unlike")
        await wait_until(frame, "!document.getElementById('back').hidden")
        frame = await host.ready()
        calls = [c for c in await host.calls() if c["name"] == "search_images_by_text"]
    assert calls == [
        {"name": "search_images_by_text", "arguments": {"query": "yellow", "k": 3, "not_images": [first], "offset": 0}}
    ]


async def test_load_more_pages_through_the_results(fake_service: ClipSearch, photos: Path, tmp_path: Path):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        whole = await host.client.call_tool("search_images_by_text", {"query": "white", "k": 8})
        await host.show("search_images_by_text", query="white", k=4)
        frame = await host.ready()
        await frame.click("#more")
        await wait_until(frame, "document.querySelectorAll('.tile').length === 8")
        frame = await host.ready()
        shown = await tiles(frame)
        calls = [c for c in await host.calls() if c["name"] == "search_images_by_text"]
    assert calls == [{"name": "search_images_by_text", "arguments": {"query": "white", "k": 4, "offset": 4}}]
    assert [t["path"] for t in shown] == [hit["path"] for hit in whole.structured_content["results"]]
    assert [t["badge"] for t in shown] == [f"#{i}" for i in range(1, 9)]
    assert all(t["loaded"] for t in shown)


HOSTILE = [
    "<img src=x onerror=window.__pwned=1>.jpg",
    "<svg onload=window.__pwned=2>.jpg",
    '"><img src=x onerror=window.__pwned=3>.jpg',
    "' onmouseover='window.__pwned=4.jpg",
]


async def test_hostile_file_names_show_as_plain_text_and_run_nothing(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "hostile"
    for name in HOSTILE:
        save_color(folder / name, COLORS["red"])
    async with gallery_host(build_server(fake_service, roots=[folder]), tmp_path) as host:
        await index(host, folder)
        await host.show("search_images_by_text", query="red", k=10)
        frame = await host.ready()
        shown = await tiles(frame)
        await frame.hover(".tile >> nth=0")  # hovering shows the full path
        await frame.click(".tile >> nth=0")
        await frame.wait_for_selector("#viewer:not([hidden])")
        pwned = await frame.evaluate("window.__pwned === undefined ? null : window.__pwned")
        injected = await frame.evaluate("document.querySelectorAll('svg, .cap img, .info img, script').length")
        heading = await frame.text_content("#viewer-name")
    assert pwned is None
    assert injected == 1  # only the gallery's own script element
    assert sorted(t["name"] for t in shown) == sorted(HOSTILE)
    assert heading == shown[0]["name"]


def plant_text(service: ClipSearch, photo: Path, text: str, collection: str = "default") -> None:
    """Record `text` as what OCR read in an indexed photo, one line."""
    target = service.collection(collection)
    entry = target.find_path(photo)
    assert entry is not None
    with target.writer() as writer:
        writer.set_text(
            entry.id, "fake-ocr", RecognisedText((TextLine(text, ((0, 0), (10, 0), (10, 5), (0, 5)), 0.9),))
        )


# Markup, a NUL, an emoji (two UTF-16 units, one code point) before a mark, and a right-to-left override.
HOSTILE_TEXT = "Flight LH 1234 <script>window.pwned=1</script>\x00 <img src=x onerror=window.pwned=2> 😀 gate \u202eB12"
LONG_TEXT = "Departures LH1234 " + "Boarding closes 20 minutes before departure. " * 5 + "Gate B12"

SNIPPETS = """() => [...document.querySelectorAll('.tile')].map((t) => {
    const s = t.querySelector('.snippet');
    return s && {
        path: t.dataset.path,
        text: s.textContent,
        title: s.title,
        dir: s.dir,
        bidi: getComputedStyle(s).unicodeBidi,
        marks: [...s.querySelectorAll('mark')].map((m) => m.textContent),
        nodes: [...s.childNodes].map((n) => n.nodeName),
        elements: s.querySelectorAll('*').length,
        clamped: s.scrollHeight > s.clientHeight + 1,
    };
})"""


async def test_text_read_in_a_photo_shows_under_its_tile_with_the_matched_words_marked_and_runs_nothing(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    red, blue = photos / "red_0.jpg", photos / "blue_0.jpg"
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        plant_text(fake_service, red, HOSTILE_TEXT)
        plant_text(fake_service, blue, LONG_TEXT)
        both = await host.client.call_tool("search_text_in_images", {"query": "lh1234 gate", "k": 2})
        context = await host.tool_context("search_text_in_images")
        await host.show("search_text_in_images", host_context=context, query="lh1234 gate", k=1)
        frame = await host.ready()
        await frame.click("#more")  # the next page comes from the same tool
        await wait_until(frame, "document.querySelectorAll('.tile').length === 2")
        frame = await host.ready()
        snippets = {s["path"]: s for s in await frame.evaluate(SNIPPETS)}
        await frame.hover(f'.tile[data-path="{blue}"]')  # hovering shows all of a long text
        hovered = {s["path"]: s for s in await frame.evaluate(SNIPPETS)}[str(blue)]
        await frame.click(f'.tile[data-path="{red}"]')
        await frame.wait_for_selector("#viewer:not([hidden])")
        viewer_marks = await frame.evaluate(
            "[...document.querySelectorAll('#viewer-meta mark')].map((m) => m.textContent)"
        )
        unlike_hidden = await frame.evaluate("document.getElementById('unlike').hidden")
        pwned = await frame.evaluate("window.pwned === undefined ? null : window.pwned")
        injected = await frame.evaluate(
            "document.querySelectorAll('script, img:not(.thumb img):not(#viewer-img)').length"
        )
        title = await frame.text_content("h1")
        calls = [c for c in await host.calls() if c["name"] not in ("get_thumbnails", "view_image")]
        errors = host.errors
    sent = {hit["path"]: hit for hit in both.structured_content["results"]}[str(red)]
    assert sent["text"] == HOSTILE_TEXT.replace("\x00", "")  # the server drops control characters
    assert sent["text_marks"] == [[7, 14], [84, 88]]  # code points: "gate" is at 85 in UTF-16 units
    hostile, long = snippets[str(red)], snippets[str(blue)]
    assert hostile["text"] == hostile["title"] == sent["text"]
    assert hostile["marks"] == ["LH 1234", "gate"]  # the emoji before "gate" does not shift it
    assert hostile["nodes"] == ["#text", "MARK", "#text", "MARK", "#text"] and hostile["elements"] == 2
    assert hostile["dir"] == "auto" and hostile["bidi"] == "isolate"  # the override stays inside the snippet
    assert pwned is None and injected == 1  # only the gallery's own script
    assert long["text"] == LONG_TEXT and long["marks"] == ["LH1234", "Gate"]
    assert long["clamped"] and not hovered["clamped"]
    assert viewer_marks == ["LH 1234", "gate"] and unlike_hidden
    assert title == "Text “lh1234 gate”"
    assert calls == [{"name": "search_text_in_images", "arguments": {"query": "lh1234 gate", "k": 1, "offset": 1}}]
    assert errors == []


async def test_a_search_filtered_by_text_marks_it_and_more_like_this_keeps_the_filter(
    fake_service: ClipSearch, photos: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        plant_text(fake_service, photos / "green_1.jpg", "Platform 😀😀 9 Exit")
        await host.show("search_images_by_text", query="green", k=3)
        frame = await host.ready()
        unfiltered = await frame.evaluate(SNIPPETS)
        await host.show("search_images_by_text", query="green", k=3, text="exit")
        frame = await host.ready()
        filtered = await frame.evaluate(SNIPPETS)
        await frame.click(".tile >> nth=0")
        await frame.click("#like")
        await wait_until(frame, "!document.getElementById('back').hidden")
        calls = [c for c in await host.calls() if c["name"] == "search_similar_images"]
    shown = [s for s in unfiltered if s]
    assert [s["path"] for s in shown] == [str(photos / "green_1.jpg")] and shown[0]["marks"] == []
    (only,) = filtered
    assert only["text"] == "Platform 😀😀 9 Exit" and only["marks"] == ["Exit"]
    assert calls == [
        {
            "name": "search_similar_images",
            "arguments": {"k": 3, "text": "exit", "image_path": str(photos / "green_1.jpg")},
        }
    ]


async def test_duplicates_view_shows_each_group_with_its_keeper_marked(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "dups"
    original = save_color(folder / "beach.jpg", COLORS["blue"], size=(640, 480))
    shutil.copyfile(original, folder / "beach copy.jpg")
    save_color(folder / "other.jpg", COLORS["green"])
    async with gallery_host(build_server(fake_service, roots=[folder]), tmp_path) as host:
        await index(host, folder)
        report = await host.show("find_duplicates")
        frame = await host.ready()
        shown = await tiles(frame)
        why = await frame.text_content(".why")
    (group,) = report.structured_content["groups"]
    assert sorted(t["path"] for t in shown) == sorted(m["path"] for m in group["members"])
    keepers = [t for t in shown if t["keeper"]]
    assert [t["path"] for t in keepers] == [group["keeper"]] and keepers[0]["badge"] == "Keep"
    assert group["keeper_reason"] in why


async def test_evaluation_view_shows_the_metrics_table_and_both_plots(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path
):
    async with gallery_host(build_server(fake_service, roots=[color_folder]), tmp_path) as host:
        await index(host, color_folder)
        report = await host.show("evaluate_retrieval", ks=[1, 3], plots=True)
        frame = await host.ready()
        await wait_until(
            frame, "[...document.querySelectorAll('.plots img')].every((i) => i.complete && i.naturalWidth > 0)"
        )
        rows = await frame.evaluate(
            "[...document.querySelectorAll('table tr')].map((r) => [...r.children].map((c) => c.textContent))"
        )
        plots = await frame.evaluate("document.querySelectorAll('.plots img').length")
    metrics = report.structured_content
    assert rows[0] == ["metric", "text→image", "image→image"]
    assert ["mAP", f"{metrics['text_to_image']['map']:.3f}", f"{metrics['image_to_image']['map']:.3f}"] in rows
    assert ["Recall@3", "1.000", f"{metrics['image_to_image']['recall_at']['3']:.3f}"] in rows
    assert plots == len(metrics["plots"]) == 2


async def test_the_host_theme_reaches_the_view(fake_service: ClipSearch, photos: Path, tmp_path: Path):
    async with gallery_host(build_server(fake_service, roots=[photos]), tmp_path) as host:
        await index(host, photos)
        backgrounds = []
        for context in (
            {"theme": "light"},
            {"theme": "dark", "styles": {"variables": {"--color-text-primary": "rgb(1, 2, 3)"}}},
        ):
            await host.show("search_images_by_text", host_context=context, query="red", k=2)
            frame = await host.ready()
            backgrounds.append(
                await frame.evaluate(
                    "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
                )
            )
    (light_bg, _), (dark_bg, dark_text) = backgrounds
    assert light_bg != dark_bg and dark_text == "rgb(1, 2, 3)"


def write_timing(name: str, value: Any) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[name] = value
    path.write_text(json.dumps(timings, indent=2) + "\n")


async def test_the_sample_photos_gallery_renders_and_is_saved_as_a_screenshot(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "samples"
    shutil.copytree(SAMPLES, folder)
    async with gallery_host(build_server(fake_service, roots=[folder]), tmp_path) as host:
        await index(host, folder)
        result = await host.show("search_images_by_text", query="a photo", k=9)
        frame = await host.ready()
        shown = await tiles(frame)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        await host.page.locator("iframe").screenshot(path=str(OUT_DIR / "gallery.png"))
    assert len(shown) == len(result.structured_content["results"]) == 9 and all(t["loaded"] for t in shown)
    with Image.open(OUT_DIR / "gallery.png") as shot:
        assert shot.width >= 900 and shot.height > 300


async def test_a_page_of_24_large_photos_is_ready_and_paging_back_reuses_the_thumbnails(
    fake_service: ClipSearch, tmp_path: Path
):
    """Reports (does not assert) how long a page of 24 photos of 12 MP takes to show, first and again."""
    folder = tmp_path / "large"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        base = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        Image.fromarray(base).resize((4000, 3000), Image.Resampling.BILINEAR).save(folder / f"p{i:02d}.jpg", quality=90)
    async with gallery_host(build_server(fake_service, roots=[folder]), tmp_path) as host:
        await index(host, folder)
        made = fake_service.thumbnails.made
        timings = []
        for _ in range(2):
            await host.show("search_images_by_text", query="red", k=24)
            frame = await host.ready(timeout_ms=60_000)
            timings.append(int(await frame.evaluate("document.documentElement.dataset.readyMs")))
            assert all(t["loaded"] for t in await tiles(frame))
        decoded = fake_service.thumbnails.made - made
    write_timing("page_of_24_12mp_ms", {"first": timings[0], "again": timings[1]})
    print(f"page of 24 photos of 12 MP ready after the tool result: first {timings[0]} ms, again {timings[1]} ms")
    assert decoded == 24  # the second showing decoded nothing


async def test_duplicate_groups_page_on_with_their_numbers_running_on(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "dups"
    for name, rgb in list(COLORS.items())[:3]:
        original = save_color(folder / f"{name}.jpg", rgb, size=(320, 240))
        shutil.copyfile(original, folder / f"{name} copy.jpg")
    async with gallery_host(build_server(fake_service, roots=[folder]), tmp_path) as host:
        await index(host, folder)
        await host.show("find_duplicates", max_groups=1)
        frame = await host.ready()
        await frame.click("#more")
        await wait_until(frame, "document.querySelectorAll('section.group').length === 2")
        headings = await frame.evaluate("[...document.querySelectorAll('section.group h2')].map((h) => h.textContent)")
        calls = [c for c in await host.calls() if c["name"] == "find_duplicates"]
    assert calls == [{"name": "find_duplicates", "arguments": {"max_groups": 1, "offset": 1}}]
    assert headings == ["Group 1: 2 exact copies", "Group 2: 2 exact copies"]


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """Two photos and a video of planted scenes: red 0-4 s, green 4-9 s, blue 9-12 s, yellow 12-18 s."""
    pytest.importorskip("av")
    folder = tmp_path / "clips"
    save_color(folder / "white.jpg", COLORS["white"])
    save_color(folder / "red.jpg", COLORS["red"])
    write_video(folder / "party.mp4", planted_scenes())
    return folder


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02}"


async def thumbnail_colour(frame: Any, path: Path) -> tuple[int, int, int]:
    """The colour near the bottom left corner of a tile's thumbnail (a scene's colour: its shape is in the middle
    and its white bar along the top)."""
    src = await frame.evaluate(f"document.querySelector('.tile[data-path=\"{path}\"] img').src")
    assert src.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        rgb = image.convert("RGB")
        return rgb.getpixel((rgb.width // 20, rgb.height * 9 // 10))


def near(rgb: tuple[int, int, int], name: str) -> bool:
    target = dict(PALETTE)[name]
    return max(abs(a - b) for a, b in zip(rgb, target, strict=True)) < 40


CLOCKS = """() => [...document.querySelectorAll('.tile')].map((t) => ({
    path: t.dataset.path,
    clock: (t.querySelector('.clock') || {}).textContent || null,
    moments: [...((t.closest('.clip') || document.createElement('div')).querySelectorAll('.moments button'))]
        .map((b) => [b.textContent, b.getAttribute('aria-pressed')]),
}))"""


async def test_a_video_tile_shows_its_moment_and_more_like_this_searches_from_that_moment(
    fake_service: ClipSearch, clips: Path, tmp_path: Path
):
    video = clips / "party.mp4"
    async with gallery_host(build_server(fake_service, roots=[clips]), tmp_path) as host:
        await index(host, clips)
        result = await host.show("search_images_by_text", query="green", k=3)
        frame = await host.ready()
        shown = await tiles(frame)
        before = await frame.evaluate(CLOCKS)
        best_colour = await thumbnail_colour(frame, video)
        photo_colour = await thumbnail_colour(frame, clips / "white.jpg")
        # Another moment: the tile shows that frame and clock, and opens there.
        hit = result.structured_content["results"][0]
        other = hit["other_moments"][-1]["time_seconds"]
        await frame.click(f".moments button >> text='{clock(other)}'")
        frame = await host.ready()
        switched = await frame.evaluate(CLOCKS)
        await frame.click(f'.tile[data-path="{video}"]')
        await frame.wait_for_selector("#viewer:not([hidden])")
        await wait_until(frame, "document.getElementById('viewer-img').src.length > 0")
        meta = await frame.evaluate(
            "[...document.querySelectorAll('#viewer-meta dt')].map((d) => [d.textContent, d.nextSibling.textContent])"
        )
        await frame.click("#like")
        await wait_until(frame, "!document.getElementById('back').hidden")
        frame = await host.ready()
        after = await tiles(frame)
        title = await frame.text_content("h1")
        calls = await host.calls()
        errors = host.errors
    assert hit["path"] == str(video) and hit["kind"] == "video" and 4 <= hit["time_seconds"] < 9
    duration = clock(hit["duration_seconds"])
    assert [t["path"] for t in shown] == [h["path"] for h in result.structured_content["results"]]
    assert all(t["loaded"] for t in shown) and [t["badge"] for t in shown] == ["#1", "#2", "#3"]
    assert before[0]["clock"] == f"▶ {clock(hit['time_seconds'])} / {duration}"
    assert [m[0] for m in before[0]["moments"]] == [clock(hit["time_seconds"])] + [
        clock(m["time_seconds"]) for m in hit["other_moments"]
    ]
    assert [m[1] for m in before[0]["moments"]] == ["true"] + ["false"] * len(hit["other_moments"])
    assert all(t["clock"] is None and t["moments"] == [] for t in before[1:])  # photos: as before
    assert near(best_colour, "green") and min(photo_colour) > 220  # the moment's frame; the white photo
    thumbnail_calls = [c["arguments"] for c in calls if c["name"] == "get_thumbnails"]
    assert thumbnail_calls[0] == {
        "paths": [h["path"] for h in result.structured_content["results"]],
        "side": 256,
        "times": [hit["time_seconds"], None, None],
    }
    assert thumbnail_calls[1] == {"paths": [str(video)], "side": 256, "times": [other]}
    assert switched[0]["clock"] == f"▶ {clock(other)} / {duration}"
    assert [m[1] for m in switched[0]["moments"]][-1] == "true" and switched[1:] == before[1:]
    views = [c["arguments"] for c in calls if c["name"] == "view_image"]
    assert views == [{"path": str(video), "max_side": 1024, "time_seconds": other}]
    assert ["moment", f"{clock(other)} of {duration}"] in meta
    similar = [c["arguments"] for c in calls if c["name"] == "search_similar_images"]
    assert similar == [{"k": 3, "image_path": str(video), "time_seconds": other}]
    assert after and all(t["loaded"] for t in after) and after[0]["path"] == str(video)
    assert title == f"Like party.mp4 at {clock(other)}"
    assert errors == []


async def test_more_like_this_moment_and_its_next_page_keep_the_media_filter(
    fake_service: ClipSearch, clips: Path, tmp_path: Path
):
    video = clips / "party.mp4"
    async with gallery_host(build_server(fake_service, roots=[clips]), tmp_path) as host:
        await index(host, clips)
        result = await host.show("search_images_by_text", query="blue", k=1, media="videos")
        frame = await host.ready()
        colour = await thumbnail_colour(frame, video)
        await frame.click(".tile >> nth=0")
        await frame.click("#like")
        await wait_until(frame, "!document.getElementById('back').hidden")
        frame = await host.ready()
        like = await tiles(frame)
        await frame.click("#more")
        frame = await host.ready()
        calls = [c["arguments"] for c in await host.calls() if c["name"] == "search_similar_images"]
    (hit,) = result.structured_content["results"]
    assert hit["path"] == str(video) and 9 <= hit["time_seconds"] < 12 and near(colour, "blue")
    moment = {"image_path": str(video), "time_seconds": hit["time_seconds"]}
    assert calls == [{"k": 1, "media": "videos", **moment}, {"k": 1, "media": "videos", **moment, "offset": 1}]
    assert [t["path"] for t in like] == [str(video)]
