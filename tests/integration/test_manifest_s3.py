"""A directory input on S3 (the local moto server) is listed in pages."""

import boto3
import fsspec

import pipeline.manifest as manifest
from pipeline.manifest import read_manifest


def test_an_s3_prefix_is_listed_page_by_page(s3_endpoint, monkeypatch):
    """30 objects under the prefix come in pages of 7 (5 requests); each of the 25 audio
    objects is listed once, sorted, with its s3:// prefix; a sibling prefix that shares
    the folder's name as a stem is not listed."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="pages")
    audio = [f"corpus/{k % 3}/clip-{k:02d}.{('wav', 'FLAC')[k % 2]}" for k in range(25)]
    others = [f"corpus/{k}/labels.csv" for k in range(3)] + ["corpus/README", "corpus/x/"]
    for key in [*audio, *others, "corpus-old/clip.wav"]:
        s3.put_object(Bucket="pages", Key=key, Body=b"")
    fs, root = fsspec.core.url_to_fs("s3://pages/corpus")
    pages = list(manifest._s3_pages(fs, root, page_size=7))
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    monkeypatch.setattr(manifest, "LIST_PAGE_SIZE", 7)
    monkeypatch.setattr(manifest, "CHUNK_ROWS", 4)
    listed = read_manifest("s3://pages/corpus/").column("uri").to_pylist()
    assert listed == sorted(f"s3://pages/{key}" for key in audio)
