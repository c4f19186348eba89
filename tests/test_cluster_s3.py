"""clipsearch cluster index on an S3 prefix: the same vectors as the same files in a folder, a rerun embeds nothing,
the faults the issue names (wrong credentials, no such bucket, no endpoint) fail within seconds before the archive's
folder is touched, and the credentials appear in none of its files nor the report. The S3 store is moto's server on
loopback (in memory, credentials checked), one per module; Ray is conftest's `local_ray`."""

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, LocalS3, save_color
from server.config import Settings
from server.errors import FileMissing, InvalidArgument, SourceUnreachable
from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
from server.indexing.sources import S3Source, open_source
from server.service import ClipSearch
from server.store.shards import ShardStore

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow.fs")
pytest.importorskip("moto.server")
pytest.importorskip("boto3")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
SMALL = ClusterOptions(block_rows=3, embed_batch=4, shard_rows=5, embedders=1)
FAULT_SECONDS = 5.0  # timeouts of 2 s (connect) and 5 s (request), two attempts: refused at once here


def photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    colors = list(COLORS.values())
    return [
        save_color(folder / f"sub{i % 2}" / f"p{i:03d}.jpg", colors[i % len(colors)], size=(40 + i, 30 + i % 7))
        for i in range(start, start + count)
    ]


def upload(s3: LocalS3, bucket: str, prefix: str, folder: Path) -> None:
    client = s3.client()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
            )


def vectors_by_name(index_dir: Path, name: str, base: str) -> dict[str, np.ndarray]:
    _, vectors, paths = ShardStore(index_dir / name).vectors()
    return {path.removeprefix(base): vectors[i] for i, path in enumerate(paths)}


def assert_no_secret_in(folder: Path, *texts: str, secrets: tuple[str, ...]) -> None:
    blobs = [p.read_bytes() for p in folder.rglob("*") if p.is_file()] + [t.encode("utf-8") for t in texts]
    for secret in secrets:
        assert not any(secret.encode("utf-8") in blob for blob in blobs), "a credential was written"


def test_an_s3_prefix_gives_the_vectors_of_the_same_files_in_a_folder_and_bad_objects_their_reasons(
    local_ray: None, local_s3: LocalS3, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    photos(folder, 9)
    index_dir = tmp_path / "index"
    recipe = EncoderRecipe(str(tiny_clip))
    from_folder = cluster_index(folder, "local", index_dir, recipe, options=SMALL)
    assert (from_folder.embedded, from_folder.failed) == (9, 0)

    upload(local_s3, "photos", "trip", folder)
    client = local_s3.client()
    client.put_object(Bucket="photos", Key="trip/empty.jpg", Body=b"")
    client.put_object(Bucket="photos", Key="trip/broken.jpg", Body=b"\xff\xd8\xff\xe0 not really a jpeg")
    client.put_object(Bucket="photos", Key="trip/clip.mp4", Body=b"a video")
    client.put_object(Bucket="photos", Key="trip/notes.txt", Body=b"not an image")
    client.put_object(Bucket="photos", Key="trip/.thumbs/p000.jpg", Body=(folder / "sub0" / "p000.jpg").read_bytes())
    client.put_object(Bucket="photos", Key="elsewhere/p.jpg", Body=(folder / "sub0" / "p000.jpg").read_bytes())

    report = cluster_index(local_s3.source("s3://photos/trip/"), "bucket", index_dir, recipe, options=SMALL)
    assert report.source == "s3://photos/trip"
    assert (report.listed, report.embedded, report.failed, report.unchanged) == (11, 9, 3, 0)
    reasons = {f.path: f.reason for f in report.failures}
    assert reasons["s3://photos/trip/empty.jpg"] == "object is empty"
    assert reasons["s3://photos/trip/broken.jpg"].startswith(("cannot decode image", "not a recognised image format"))
    assert reasons["s3://photos/trip/clip.mp4"] == "videos are not embedded on a cluster yet"

    expected = vectors_by_name(index_dir, "local", f"{folder.resolve()}/")
    got = vectors_by_name(index_dir, "bucket", "s3://photos/trip/")
    assert sorted(got) == sorted(expected) == sorted(f"sub{i % 2}/p{i:03d}.jpg" for i in range(9))
    np.testing.assert_allclose(np.stack([got[n] for n in expected]), np.stack(list(expected.values())), atol=1e-5)
    cosines = np.sum(np.stack([got[n] for n in expected]) * np.stack(list(expected.values())), axis=1)
    assert cosines.min() >= 0.99999
    listing = ShardStore(index_dir / "bucket").read_listing()
    assert all(uri.startswith("s3://photos/trip/") for _, uri, _, _ in listing)
    assert all(mtime > 10**18 for *_, mtime in listing)  # the listing's LastModified, in ns (after 2001)

    # Searched, the archive names its objects by their URIs (a Path would fold the double slash).
    service = ClipSearch(Settings(index_dir=index_dir, model=str(tiny_clip), engine="onnx"))
    hits = service.search_text("a red photo", k=9, collection="bucket").results
    assert sorted(h.path for h in hits) == sorted(f"s3://photos/trip/sub{i % 2}/p{i:03d}.jpg" for i in range(9))


def test_a_rerun_through_the_cli_embeds_nothing_a_rewritten_object_again_and_no_credential_is_written(
    local_ray: None,
    local_s3: LocalS3,
    tiny_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli.main import main

    folder = tmp_path / "photos"
    files = photos(folder, 6)
    upload(local_s3, "rerun", "a/b", folder)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", local_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", local_s3.secret_key)
    index_dir = tmp_path / "index"
    command = ["cluster", "index", "s3://rerun/a/b", "-c", "archive", "--s3-endpoint", local_s3.endpoint]
    options = ["--model", str(tiny_clip), "--index-dir", str(index_dir), "--json"]
    assert main([*command, *options]) == 0
    first_out = capsys.readouterr().out
    first = json.loads(first_out)
    assert (first["listed"], first["embedded"], first["source"]) == (6, 6, "s3://rerun/a/b")

    assert main([*command, *options]) == 0
    again_out = capsys.readouterr().out
    again = json.loads(again_out)
    assert (again["listed"], again["unchanged"], again["embedded"], again["cluster"]) == (6, 6, 0, "not needed")

    client = local_s3.client()
    save_color(files[0], (1, 2, 3), size=(90, 70))  # rewritten: another size, a later LastModified
    client.put_object(Bucket="rerun", Key="a/b/sub0/p000.jpg", Body=files[0].read_bytes())
    client.put_object(
        Bucket="rerun", Key="a/b/new.png", Body=save_color(tmp_path / "new.png", (9, 9, 9), fmt="PNG").read_bytes()
    )
    assert main([*command, *options]) == 0
    grown_out = capsys.readouterr().out
    grown = json.loads(grown_out)
    assert (grown["listed"], grown["unchanged"], grown["embedded"]) == (7, 5, 2)

    archive = index_dir / "archive"
    assert (archive / "archive.json").exists() and (archive / "listing.parquet").exists()
    secrets = (local_s3.secret_key, local_s3.access_key)
    assert_no_secret_in(archive, first_out, again_out, grown_out, secrets=secrets)


def test_an_object_gone_or_empty_since_the_listing_is_unreadable_with_its_reason(local_s3: LocalS3) -> None:
    from server.errors import ImageUnreadable

    client = local_s3.client()
    client.create_bucket(Bucket="reads")
    client.put_object(Bucket="reads", Key="p/empty.jpg", Body=b"")
    client.put_object(Bucket="reads", Key="p/ok.jpg", Body=b"some bytes")
    source = local_s3.source("s3://reads/p")
    assert source.read("s3://reads/p/ok.jpg") == b"some bytes"
    with pytest.raises(ImageUnreadable, match=r"^object is empty$"):
        source.read("s3://reads/p/empty.jpg")
    client.delete_object(Bucket="reads", Key="p/ok.jpg")
    with pytest.raises(ImageUnreadable, match=r"^object no longer exists$"):
        source.read("s3://reads/p/ok.jpg")


@pytest.mark.parametrize(
    "fault, uri, environ, endpoint, error, message",
    [
        ("wrong credentials", "s3://faults/x", {"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "nope"},
         None, SourceUnreachable, r"refused the credentials in AWS_ACCESS_KEY_ID for bucket 'faults'"),
        ("no such bucket", "s3://no-such-bucket/x", None, None, FileMissing,
         r"Bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+"),
        ("no such prefix", "s3://faults/nothing-here", None, None, FileMissing, r"Nothing under s3://faults/nothing-here"),
        ("no endpoint", "s3://faults/x", None, "http://127.0.0.1:1", SourceUnreachable,
         r"Cannot reach the S3 endpoint at http://127\.0\.0\.1:1 .*check --s3-endpoint"),
    ],
    ids=["wrong-credentials", "no-such-bucket", "no-such-prefix", "no-endpoint"],
)  # fmt: skip
def test_a_source_fault_fails_within_seconds_with_a_clear_error_and_leaves_no_archive(
    local_s3: LocalS3,
    tiny_clip: Path,
    tmp_path: Path,
    fault: str,
    uri: str,
    environ: dict[str, str] | None,
    endpoint: str | None,
    error: type[Exception],
    message: str,
) -> None:
    folder = tmp_path / "one"
    save_color(folder / "x" / "p.jpg", (10, 200, 30))
    upload(local_s3, "faults", "x", folder / "x")
    keys = environ or {"AWS_ACCESS_KEY_ID": local_s3.access_key, "AWS_SECRET_ACCESS_KEY": local_s3.secret_key}
    source = open_source(uri, endpoint=endpoint or local_s3.endpoint, environ=keys)
    index_dir = tmp_path / "index"
    began = time.monotonic()
    with pytest.raises(error, match=message) as raised:
        cluster_index(source, "archive", index_dir, EncoderRecipe(str(tiny_clip)))
    took = time.monotonic() - began
    assert took < FAULT_SECONDS, f"{fault}: {took:.1f} s"
    assert not (index_dir / "archive").exists()  # nothing a later run could trust, not even the folder
    assert keys["AWS_SECRET_ACCESS_KEY"] not in str(raised.value)


def test_the_cli_says_a_source_fault_in_one_line_with_exit_code_2(
    local_s3: LocalS3,
    tiny_clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli.main import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    options = ["--model", str(tiny_clip), "--index-dir", str(tmp_path / "index"), "-c", "archive"]
    assert main(["cluster", "index", "s3://faults", "--s3-endpoint", local_s3.endpoint, *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipsearch: error: S3 at http://127.0.0.1:") and "refused the credentials" in err
    assert "not-the-secret" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "index" / "archive").exists()


def test_an_s3_source_keeps_its_credentials_out_of_its_repr_and_pickles_them_for_the_tasks() -> None:
    environ = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_REGION": "eu-west-3"}
    source = open_source("s3://bucket/some/prefix/", endpoint="http://minio:9000/", environ=environ)
    assert isinstance(source, S3Source)
    assert (source.bucket, source.prefix, source.endpoint, source.region) == (
        "bucket",
        "some/prefix",
        "http://minio:9000",
        "eu-west-3",
    )
    assert "s3cr3t" not in repr(source) and "AKIAEXAMPLE" not in repr(source)
    assert pickle.loads(pickle.dumps(source)) == source  # what a Ray task receives, in memory
    anonymous = open_source("s3://bucket", anonymous=True, environ=environ)
    assert (anonymous.access_key, anonymous.secret_key, anonymous.describe()) == (None, None, "s3://bucket")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("s3://", {}, "names no bucket"),
        ("s3:///prefix", {}, "names no bucket"),
        ("s3://b/p", {"endpoint": "ftp://host"}, "is not http"),
        ("s3://b/p", {"endpoint": "http://host:9000/path"}, "is not http"),
        ("/some/folder", {"endpoint": "http://host:9000"}, "are for an s3:// source"),
        ("/some/folder", {"anonymous": True}, "are for an s3:// source"),
    ],
)
def test_a_malformed_source_or_s3_options_on_a_folder_are_refused(
    text: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        open_source(text, environ={}, **options)  # type: ignore[arg-type]


def test_the_s3_source_never_asks_the_cloud_metadata_address() -> None:
    from server.indexing.sources import _filesystem

    saved = os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
    try:
        _filesystem(S3Source("bucket", endpoint="http://127.0.0.1:1"))
        assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    finally:
        if saved is None:
            os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        else:
            os.environ["AWS_EC2_METADATA_DISABLED"] = saved
