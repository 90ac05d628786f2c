"""ingest/landing: which files under landing/<source>/ are deliveries (extensions, in-progress names),
which are refused before they are read (paths that leave the landing zone, symlinked directories,
control characters), when a file has settled, and what its name says about when it was delivered."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path

import pytest

from orchestration.ingest import landing


def touch(path: Path, text: str = "a,b\n1,2\n", age_s: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize("name,expected", [
    ("flights.csv", ("csv", None)), ("flights.CSV", ("csv", None)), ("w.jsonl", ("jsonl", None)),
    ("w.ndjson", ("jsonl", None)), ("p.parquet", ("parquet", None)), ("f.csv.gz", ("csv", "gzip")),
    ("w.JSONL.GZ", ("jsonl", "gzip")), ("notes.txt", (None, None)), ("f.csv.zip", (None, None)),
    ("f.gz", (None, None)), ("csv", (None, None)),
])
def test_classify_reads_format_and_compression_from_the_name(name, expected):
    assert landing.classify(name) == expected


def test_discover_finds_deliveries_at_any_depth_sorted_and_skips_what_is_not_one(tmp_path):
    root = tmp_path / "landing"
    for rel in ("flights/b.csv", "flights/2013/01/a.jsonl.gz", "flights/2013/02/c.parquet", "flights/readme.txt",
                "flights/.partial.csv", "flights/_tmp.csv", "flights/_incoming/d.csv", "flights/.git/e.csv",
                "weather/w.csv"):
        touch(root / rel)
    found = landing.discover(root, "flights")
    assert [(d.relative, d.format, d.compression, d.problem) for d in found] == [
        ("flights/2013/01/a.jsonl.gz", "jsonl", "gzip", None),
        ("flights/2013/02/c.parquet", "parquet", None, None),
        ("flights/b.csv", "csv", None, None),
    ]
    assert all(d.source == "flights" and d.path == root / d.relative for d in found)


def test_a_source_without_a_folder_has_no_deliveries(tmp_path):
    assert landing.discover(tmp_path / "landing", "planes") == []


def test_a_file_linked_from_outside_the_landing_zone_is_refused_with_the_place_it_resolves_to(tmp_path):
    root = tmp_path / "landing"
    outside = touch(tmp_path / "secrets" / "flights_20130101T0600Z.csv")
    (root / "flights").mkdir(parents=True)
    (root / "flights" / "flights_20130101T0600Z.csv").symlink_to(Path("..", "..", "secrets", outside.name))
    [d] = landing.discover(root, "flights")
    assert d.format == "csv" and d.problem.startswith(f"path resolves to {outside.resolve()}, outside the landing zone")
    assert "refused (move the file into landing/flights/)" in d.problem


def test_a_link_to_another_source_is_outside_this_sources_zone(tmp_path):
    root = tmp_path / "landing"
    other = touch(root / "weather" / "w.csv")
    (root / "flights").mkdir()
    (root / "flights" / "w.csv").symlink_to(other)
    [d] = landing.discover(root, "flights")
    assert "outside the landing zone" in d.problem


def test_a_link_inside_the_sources_zone_is_a_delivery(tmp_path):
    root = tmp_path / "landing"
    real = touch(root / "flights" / "2013" / "a.csv")
    (root / "flights" / "b.csv").symlink_to(real)
    assert [(d.relative, d.problem) for d in landing.discover(root, "flights")] == [("flights/2013/a.csv", None), ("flights/b.csv", None)]


def test_a_symlinked_directory_is_reported_not_followed(tmp_path):
    root = tmp_path / "landing"
    touch(tmp_path / "elsewhere" / "x.csv")
    (root / "flights").mkdir(parents=True)
    (root / "flights" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    [d] = landing.discover(root, "flights")
    assert (d.relative, d.format) == ("flights/more", None)
    assert d.problem == "a symlinked directory is not followed: move its files into the landing zone"


def test_a_name_with_control_characters_is_refused(tmp_path):
    root = tmp_path / "landing"
    touch(root / "flights" / "bad\x07name.csv")
    [d] = landing.discover(root, "flights")
    assert d.problem == "file name contains control characters: refused (rename the file)"


def test_a_dangling_link_is_not_a_regular_file(tmp_path):
    root = tmp_path / "landing"
    (root / "flights").mkdir(parents=True)
    (root / "flights" / "gone.csv").symlink_to(root / "flights" / "nowhere.csv")
    [d] = landing.discover(root, "flights")
    assert d.problem == "not a regular file"


@pytest.mark.parametrize("name,when", [
    ("flights_20130102T0600Z.csv", dt.datetime(2013, 1, 2, 6, 0, 0, tzinfo=dt.timezone.utc)),
    ("weather_20131231T235959Z.jsonl.gz", dt.datetime(2013, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)),
    ("flights_20130230T0600Z.csv", None),  # no such day
    ("flights.csv", None),
])
def test_the_delivery_time_comes_from_the_name(tmp_path, name, when):
    d = landing.Delivery("flights", tmp_path / name, f"flights/{name}", "csv", None)
    assert d.delivered_at == when


@pytest.mark.parametrize("raw,seconds", [("", 2.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0), (" 10 ", 10.0)])
def test_settle_seconds_come_from_the_environment(monkeypatch, raw, seconds):
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", raw)
    assert landing.settle_seconds() == seconds


def test_a_settle_interval_that_is_not_a_number_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "soon")
    with pytest.raises(ValueError, match="PLUMBLINE_SETTLE_SECONDS='soon' is not a number of seconds"):
        landing.settle_seconds()


def deliveries(root: Path) -> list[landing.Delivery]:
    return landing.discover(root, "flights")


def test_old_files_are_settled_without_waiting(tmp_path):
    root = tmp_path / "landing"
    touch(root / "flights" / "a.csv")
    touch(root / "flights" / "b.csv")
    slept = []
    settled, moving = landing.settle(deliveries(root), seconds=30, sleep=slept.append)
    assert [d.relative for d in settled] == ["flights/a.csv", "flights/b.csv"] and moving == [] and slept == []


def test_a_young_file_is_watched_once_and_taken_if_it_did_not_change(tmp_path):
    root = tmp_path / "landing"
    touch(root / "flights" / "old.csv")
    touch(root / "flights" / "young.csv", age_s=1)
    slept = []
    settled, moving = landing.settle(deliveries(root), seconds=30, sleep=slept.append)
    assert [d.relative for d in settled] == ["flights/old.csv", "flights/young.csv"] and moving == []
    assert len(slept) == 1 and 28 < slept[0] <= 29.5, "until the newest file is 30 s old"


def test_a_file_that_changes_while_watched_is_still_being_written(tmp_path):
    root = tmp_path / "landing"
    touch(root / "flights" / "old.csv")
    young = touch(root / "flights" / "young.csv", age_s=1)

    def writer_appends(_seconds):
        with open(young, "a") as f:
            f.write("3,4\n")

    settled, moving = landing.settle(deliveries(root), seconds=30, sleep=writer_appends)
    assert [d.relative for d in settled] == ["flights/old.csv"]
    assert [d.relative for d in moving] == ["flights/young.csv"]
    assert "PLUMBLINE_SETTLE_SECONDS" in landing.still_being_written(30) and "30s" in landing.still_being_written(30)


def test_no_settle_interval_takes_everything(tmp_path):
    root = tmp_path / "landing"
    touch(root / "flights" / "young.csv", age_s=0)
    settled, moving = landing.settle(deliveries(root), seconds=0, sleep=pytest.fail)
    assert len(settled) == 1 and moving == []


def test_content_hash_is_the_sha256_and_size_of_the_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path = tmp_path / "f.parquet"
    path.write_bytes(data)
    assert landing.content_hash(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_jsonl_values_are_kept_as_the_text_each_kind_renders_to_and_a_column_typed_by_its_first_value(tmp_path):
    """Each column's text and observed type, whatever mix of kinds its lines give: strings as delivered,
    integers in full, floats by repr, booleans lower-case, objects and arrays as sorted JSON."""
    from orchestration.ingest import readers

    lines = ['{"s": "a", "i": 1, "f": 1.5, "b": true, "o": {"z": 1, "y": [2]}, "m": 1, "n": null}',
             '{"s": null, "i": 12345678901234567890123, "f": 1e16, "b": false, "o": null, "m": 2.0, "n": null}',
             '{"s": "caf\\u00e9", "i": null, "f": -0.0, "b": null, "o": [1, {"k": "v"}], "m": "x", "n": null, "late": 3}']
    root = tmp_path / "landing"
    (root / "flights").mkdir(parents=True)
    (root / "flights" / "f_20130101T0000Z.jsonl").write_text("\n".join(lines) + "\n")
    [d] = landing.discover(root, "flights")
    table, loaded = readers._jsonl_table(d)
    assert table.to_pydict() == {
        "s": ["a", None, "café"], "i": ["1", "12345678901234567890123", None], "f": ["1.5", "1e+16", "-0.0"],
        "b": ["true", "false", None], "o": ['{"y": [2], "z": 1}', None, '[1, {"k": "v"}]'], "m": ["1", "2.0", "x"],
        "n": [None, None, None], "late": [None, None, "3"], "_row_offset": [0, 1, 2]}
    assert loaded.observed_schema == [{"name": n, "type": t} for n, t in [
        ("s", "string"), ("i", "integer"), ("f", "number"), ("b", "boolean"), ("o", "object"), ("m", "integer"),
        ("n", "null"), ("late", "integer")]]
