"""The record sources of keras_ov2.data and the ArrayRecord record format.

Every file is made here: images encoded by Pillow, tar shards by tarfile,
Parquet by pyarrow. A source must give back exactly what was stored (image
bytes untouched, captions intact), and give each kind of broken record a raw
value that `check_record` counts under the right reason.
"""

import io
import json
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from keras_ov2.data import ArrayRecordSource
from keras_ov2.data import JsonlFolderSource
from keras_ov2.data import ParquetSource
from keras_ov2.data import RecordFormatError
from keras_ov2.data import SourceError
from keras_ov2.data import WebDatasetSource
from keras_ov2.data import decode_record
from keras_ov2.data import encode_record
from keras_ov2.data import open_source
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record

FORMATS = ("array_record", "tar", "parquet", "jsonl")


def encoded(format, size=(24, 16), colour=(200, 30, 60)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=format)
    return buffer.getvalue()


JPEG, PNG, WEBP = encoded("JPEG"), encoded("PNG", colour=(0, 90, 255)), encoded("WEBP")
EXTENSION = {JPEG: "jpg", PNG: "png", WEBP: "webp"}

# Three good samples: several formats, non-ASCII captions, several captions each.
SAMPLES = [
    {"image": JPEG, "caption": "a red square", "re_caption": ["a long caption", "another"]},
    {"image": PNG, "caption": "café ☕ Zürich 東京の猫 🐈", "re_caption": ["ünï ✓"]},
    {"image": WEBP, "caption": "  spaced  ", "re_caption": ["один", "два", "три"]},
]


def reason(record, field="caption"):
    """What `check_record` makes of a raw record: "ok" or its BadRecord reason."""
    try:
        check_record(record, field)
        return "ok"
    except BadRecord as error:
        return error.reason


def write_tar(path, samples):
    """samples: [(key, {extension: bytes})] -> an uncompressed tar, members in order."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_array_record(path, records):
    """records: bytes each, written as they are."""
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    return path


def write_jsonl(folder, lines, files=None):
    """lines: bytes or JSON-able objects, one per line; files: {name: bytes}."""
    folder.mkdir(exist_ok=True)
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    lines = [line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines]
    (folder / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def plant(format, tmp_path, samples):
    """`samples` (as SAMPLES) stored in `format` -> a source reading them."""
    if format == "array_record":
        path = write_array_record(tmp_path / "d.array_record", map(encode_record, samples))
        return ArrayRecordSource(str(path))
    if format == "tar":
        # Two shards, to cross a file boundary.
        shards = [samples[:1], samples[1:]]
        for n, shard in enumerate(shards):
            write_tar(tmp_path / f"s{n}.tar", [
                (f"{n}{i:04d}", {EXTENSION[s["image"]]: s["image"], "txt": s["caption"].encode(),
                                 "json": json.dumps({"re_caption": s["re_caption"]}).encode()})
                for i, s in enumerate(shard)
            ])
        return WebDatasetSource(str(tmp_path / "*.tar"))
    if format == "parquet":
        schema = pa.schema([("image", pa.binary()), ("caption", pa.string()),
                            ("re_caption", pa.list_(pa.string()))])
        table = pa.Table.from_pylist(samples, schema=schema)
        pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)  # two row groups
        return ParquetSource(tmp_path / "d.parquet")
    files = {f"{i}.{EXTENSION[s['image']]}": s["image"] for i, s in enumerate(samples)}
    lines = [{**s, "image": name} for s, name in zip(samples, files)]
    return JsonlFolderSource(write_jsonl(tmp_path / "folder", lines, files))


@pytest.mark.parametrize("format", FORMATS)
def test_round_trip_keeps_images_and_captions(format, tmp_path):
    source = plant(format, tmp_path, SAMPLES)
    assert len(source) == len(SAMPLES)
    keys = set()
    for i, sample in enumerate(SAMPLES):
        record = source[i]
        assert record["image"] == sample["image"]  # the bytes as stored, not re-encoded
        assert record["caption"] == sample["caption"]
        assert record["re_caption"] == sample["re_caption"]
        assert isinstance(record["key"], str) and record["key"] not in keys
        keys.add(record["key"])
        image, caption = check_record(record, "caption")
        assert image.shape == (16, 24, 3) and caption == sample["caption"].strip()
        _, long_caption = check_record(record, "re_caption", np.random.default_rng(i))
        assert long_caption in sample["re_caption"]
    assert repr(len(SAMPLES)) in repr(source)


@pytest.mark.parametrize("format", FORMATS)
def test_sources_survive_pickling(format, tmp_path):
    source = plant(format, tmp_path, SAMPLES)
    first = source[0]  # opens files, fills caches: none of that may travel
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy) == len(source)
    assert copy[0] == first
    assert [copy[i]["image"] for i in range(len(copy))] == [s["image"] for s in SAMPLES]


def test_out_of_range_index_raises(tmp_path):
    source = plant("array_record", tmp_path, SAMPLES)
    with pytest.raises(IndexError):
        source[len(SAMPLES)]


# --- broken records: each source's raw value must give check_record's reason ---

TRUNCATED_JPEG = encoded("JPEG", size=(64, 64))[:300]


def test_tar_broken_records(tmp_path):
    samples = [
        ("good", {"jpg": JPEG, "txt": b"fine"}),
        ("truncated", {"jpg": TRUNCATED_JPEG, "txt": b"cut"}),
        ("empty", {"jpg": b"", "txt": b"zero bytes"}),
        ("latin1", {"jpg": JPEG, "txt": "caf\xe9".encode("latin-1")}),
        ("badjson", {"jpg": JPEG, "txt": b"ok", "json": b"{not json"}),
        ("nocaption", {"jpg": JPEG, "json": b'{"url": "http://x"}'}),
        ("noimage", {"txt": b"caption only", "json": b'{"status": "failed"}'}),
    ]
    source = WebDatasetSource(write_tar(tmp_path / "00003.tar", samples))
    assert [reason(source[i]) for i in range(len(source))] == [
        "ok", "unreadable_image", "empty_image", "caption_not_utf8", "unreadable_record",
        "missing_caption", "missing_image",
    ]
    assert source[2]["image"] == b""
    assert source[3]["caption"] == "caf\xe9".encode("latin-1")  # the raw bytes
    assert source[4]["key"] == "00003.tar/badjson" and "badjson.json" in source[4]["detail"]
    assert source[5]["url"] == "http://x"


def test_tar_groups_members_by_key_up_to_the_first_dot(tmp_path):
    samples = [("dir/000001", {"jpg": JPEG, "txt": b"one"}),
               ("dir/000001", {"caption.extra": b"ignored"}),
               ("dir/000002", {"PNG": PNG, "txt": b"two"})]
    source = WebDatasetSource(write_tar(tmp_path / "a.tar", samples))
    assert len(source) == 2
    assert source[0]["key"] == "a.tar/dir/000001" and source[0]["caption"] == "one"
    assert source[1]["image"] == PNG  # extensions in any case


def test_array_record_broken_records(tmp_path):
    records = [
        encode_record({"image": JPEG, "caption": "fine"}),
        encode_record({"image": TRUNCATED_JPEG, "caption": "cut"}),
        encode_record({"image": b"", "caption": "zero bytes"}),
        encode_record({"image": JPEG, "caption": b"\xff\xfe"}),
        b"\x05\x00\x00\x00{bad}",  # bad framing
        encode_record({"image": JPEG, "other": "x"}),
        encode_record({"caption": "no image"}),
    ]
    path = write_array_record(tmp_path / "s.array_record", records)
    source = ArrayRecordSource(path)
    assert [reason(source[i]) for i in range(len(source))] == [
        "ok", "unreadable_image", "empty_image", "caption_not_utf8", "unreadable_record",
        "missing_caption", "missing_image",
    ]
    assert source[4]["key"] == "s.array_record/4"  # where it is, as it has no stored key


def test_parquet_broken_records_and_hugging_face_image_struct(tmp_path):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [
        {"image": {"bytes": JPEG, "path": "a.jpg"}, "text": "fine", "n": 1},
        {"image": {"bytes": TRUNCATED_JPEG, "path": None}, "text": "cut", "n": 2},
        {"image": {"bytes": b"", "path": None}, "text": "zero bytes", "n": 3},
        {"image": {"bytes": JPEG, "path": None}, "text": None, "n": 4},
        {"image": None, "text": "no image", "n": 5},
    ]
    schema = pa.schema([("image", image), ("text", pa.string()), ("n", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "hf.parquet",
                   row_group_size=2)
    source = ParquetSource(str(tmp_path / "hf.parquet"))
    assert source.image_column == "image" and source.text_columns == ["text"]
    assert [reason(source[i], "text") for i in range(len(source))] == [
        "ok", "unreadable_image", "empty_image", "missing_caption", "missing_image",
    ]
    assert source[0]["image"] == JPEG and "n" not in source[0]
    assert source[4]["key"] == "hf.parquet/4"


def test_parquet_reads_across_files_and_row_groups_in_any_order(tmp_path):
    for n in range(2):
        rows = [{"jpg": JPEG, "caption": f"file {n} row {i}"} for i in range(5)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{n}.parquet", row_group_size=2)
    source = ParquetSource([tmp_path / "1.parquet", tmp_path / "0.parquet"])
    order = np.random.default_rng(0).permutation(len(source))
    captions = {int(i): source[int(i)]["caption"] for i in order}
    # Files in the order given.
    expected = [f"file {n} row {i}" for n in (1, 0) for i in range(5)]
    assert [captions[i] for i in range(10)] == expected


def test_jsonl_folder_broken_records(tmp_path):
    files = {"good.jpg": JPEG, "cut.jpg": TRUNCATED_JPEG, "empty.jpg": b""}
    lines = [
        {"image": "good.jpg", "caption": "fine"},
        {"image": "cut.jpg", "caption": "cut"},
        {"image": "empty.jpg", "caption": "zero bytes"},
        b'{"image": "good.jpg", "caption": "caf\xe9"}',  # not UTF-8
        b'{"image": "good.jpg", "caption": "\\udc80"}',  # a lone surrogate
        b'{"image": "good.jpg", "caption": ',  # bad JSON line
        b"[1, 2]",  # JSON, but not an object
        {"image": "good.jpg", "short": "no caption field"},
        {"image": "gone.jpg", "caption": "no such file"},
        {"caption": "no image field"},
    ]
    source = JsonlFolderSource(write_jsonl(tmp_path / "f", lines, files))
    assert [reason(source[i]) for i in range(len(source))] == [
        "ok", "unreadable_image", "empty_image", "unreadable_record", "caption_not_utf8",
        "unreadable_record", "unreadable_record", "missing_caption", "missing_image",
        "missing_image",
    ]
    assert source[5]["key"] == "captions.jsonl:6"
    assert "gone.jpg" in source[8]["detail"]


def test_jsonl_blank_lines_are_not_records(tmp_path):
    folder = write_jsonl(tmp_path / "f", [{"image": "a.png", "caption": "x"}, b"", b"  "],
                         {"a.png": PNG})
    assert len(JsonlFolderSource(folder)) == 1


# --- whole-file problems: a clear error at construction ---

def test_construction_errors_name_the_file(tmp_path):
    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 100)
    (tmp_path / "fake.array_record").write_bytes(b"not an array record" * 100)
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 nope")
    pq.write_table(pa.table({"caption": ["a"], "url": ["http://x"]}), tmp_path / "noimage.parquet")
    cases = [
        (WebDatasetSource, tmp_path / "fake.tar", "not an uncompressed tar"),
        (WebDatasetSource, tmp_path / "missing*.tar", "no such file"),
        (ArrayRecordSource, tmp_path / "fake.array_record", "not an ArrayRecord file"),
        (ParquetSource, tmp_path / "fake.parquet", "not a Parquet file"),
        (ParquetSource, tmp_path / "noimage.parquet", "no image column"),
        (JsonlFolderSource, tmp_path, "captions.jsonl"),
    ]
    for source, path, message in cases:
        with pytest.raises(SourceError, match=message) as raised:
            source(str(path))
        assert str(path) in str(raised.value)
    with pytest.raises(SourceError, match="column 'url' is string, expected image bytes"):
        ParquetSource(tmp_path / "noimage.parquet", image_column="url")
    pq.write_table(pa.table({"jpg": [JPEG]}), tmp_path / "images.parquet")
    with pytest.raises(SourceError, match="images.parquet: no column 'alt'"):
        ParquetSource(tmp_path / "images.parquet", text_columns=["alt"])


def test_open_source_picks_the_source_from_the_path(tmp_path):
    jsonl = plant("jsonl", tmp_path, SAMPLES)
    plant("tar", tmp_path, SAMPLES)
    plant("parquet", tmp_path, SAMPLES)
    (tmp_path / "shards").mkdir()
    plant("array_record", tmp_path / "shards", SAMPLES)
    assert isinstance(open_source(jsonl.folder), JsonlFolderSource)
    assert isinstance(open_source(jsonl.folder / "captions.jsonl"), JsonlFolderSource)
    assert isinstance(open_source(tmp_path / "shards"), ArrayRecordSource)
    assert isinstance(open_source(str(tmp_path / "s*.tar")), WebDatasetSource)
    assert isinstance(open_source(tmp_path / "d.parquet"), ParquetSource)
    # img2dataset's folders hold a metadata .parquet beside each .tar: the tars win.
    source = open_source(tmp_path)
    assert isinstance(source, WebDatasetSource) and len(source) == len(SAMPLES)
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "x.csv").write_text("image,caption\n")
    for paths in (tmp_path / "empty_folder", str(tmp_path / "*"), tmp_path / "x.csv"):
        with pytest.raises(SourceError, match="supported: a folder holding captions.jsonl"):
            open_source(paths)
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "missing.tar")


# --- the record format ---

def test_record_format_round_trip():
    record = {"key": "k/1", "image": JPEG, "caption": "ünï ✓ 🐈", "list": ["a", "б"],
              "raw": b"\xff\x00", "empty": b"", "n": 7, "none": None, "odd": "\udc80"}
    assert decode_record(encode_record(record)) == record
    assert decode_record(encode_record({})) == {}
    with pytest.raises(TypeError, match="'array'"):
        encode_record({"array": np.zeros(3)})


@pytest.mark.parametrize("data", [
    b"", b"\x01\x00", b"\xff\xff\x00\x00{}", b"\x02\x00\x00\x00{}",
    b"\x02\x00\x00\x00[]", b"\x04\x00\x00\x00\xff\xfe\xfd\xfc",
    encode_record({"image": JPEG})[:-1],  # a truncated image
    encode_record({"image": JPEG}) + b"x",  # trailing bytes
    encode_record({"a": "b"}).replace(b'"v":1', b'"v":9'),  # a future version
])
def test_record_format_rejects_bad_framing(data):
    with pytest.raises(RecordFormatError):
        decode_record(data)
