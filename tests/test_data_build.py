"""`build_array_record` and `ov2 data build`: good records stored as found, bad ones counted."""

import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from keras_ov2 import cli
from keras_ov2.data import ArrayRecordSource
from keras_ov2.data import JsonlFolderSource
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import build_array_record
from keras_ov2.data.decode import check_record


def jpeg(seed):
    """A noisy JPEG, different for each seed (so that stored bytes can be told apart)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


GOOD = 5
# Planted bad records, each with the reason the build must count it under.
BAD = {
    "unreadable_image": {"image": "cut.jpg", "caption": "a truncated jpeg"},
    "empty_image": {"image": "empty.jpg", "caption": "a zero-byte file"},
    "missing_image": {"image": "gone.jpg", "caption": "no such file"},
    "missing_caption": {"image": "0.jpg", "alt": "no caption field"},
    "empty_caption": {"image": "0.jpg", "caption": "   "},
}


@pytest.fixture
def folder(tmp_path):
    """A captions.jsonl folder: GOOD good records (one with two captions), the
    BAD ones, and a line that is not JSON; good and bad interleaved."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(GOOD):
        (folder / f"{i}.jpg").write_bytes(jpeg(i))
    (folder / "cut.jpg").write_bytes(jpeg(99)[:200])
    (folder / "empty.jpg").write_bytes(b"")
    good = [{"image": f"{i}.jpg", "caption": f"picture number {i} ✓"} for i in range(GOOD)]
    good[1]["caption"] = ["first of two", "second of two"]
    lines = [json.dumps(row) for pair in zip(good, BAD.values()) for row in pair]
    lines.append('{"image": "0.jpg", "caption": ')  # unreadable_record
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_build_writes_good_records_as_found_and_counts_bad_ones(folder, tmp_path):
    out = tmp_path / "shards"
    summary = build_array_record(JsonlFolderSource(folder), out, records_per_shard=2,
                                 name="train", verbose=0)
    assert summary["records_read"] == GOOD + len(BAD) + 1
    assert summary["records_written"] == GOOD
    assert Counter(summary["skipped"]) == Counter({**dict.fromkeys(BAD, 1), "unreadable_record": 1})
    # Shard k: the good ones of records 2k and 2k + 1 (the last holds none).
    assert summary["shards"] == [f"train-0000{i}-of-00006.array_record" for i in range(6)]
    assert summary["bytes"] == sum((out / name).stat().st_size for name in summary["shards"])
    assert json.loads((out / "summary.json").read_text()) == summary
    assert not list(out.glob(".*"))  # no partial shards left

    built = ArrayRecordSource(str(out / "train-*.array_record"))
    assert len(built) == GOOD
    for i in range(GOOD):
        record = built[i]
        assert record["image"] == jpeg(i)  # the original bytes, not re-encoded
        assert record["key"] == f"{i}.jpg"
        check_record(record, "caption")
    assert built[1]["caption"] == ["first of two", "second of two"]
    assert built[4]["caption"] == "picture number 4 ✓"


def test_build_checks_every_caption_field_and_every_caption(tmp_path):
    image = jpeg(0)
    records = [
        {"image": image, "caption": "short", "long": ["a long one", "another"]},
        {"image": image, "caption": "short"},  # no "long"
        {"image": image, "caption": "short", "long": ["fine", " "]},  # one empty caption
        {"image": image, "caption": "short", "long": [b"\xff"]},  # not UTF-8
    ]
    summary = build_array_record(records, tmp_path, caption_fields=["caption", "long"],
                                 verbose=0)
    assert summary["records_written"] == 1
    assert summary["skipped"] == {"missing_caption": 1, "empty_caption": 1, "caption_not_utf8": 1}
    assert ArrayRecordSource(str(tmp_path / "*.array_record"))[0]["long"] == records[0]["long"]


def test_build_of_synthetic_scenes_stores_lossless_png(tmp_path):
    scenes = SyntheticScenes(3, image_size=56)
    summary = build_array_record(scenes, tmp_path, verbose=0)
    built = ArrayRecordSource(str(tmp_path / "data-00000-of-00001.array_record"))
    assert summary["records_written"] == len(built) == 3
    for i in range(3):
        record = built[i]
        assert record["image"].startswith(b"\x89PNG")
        image, caption = check_record(record, "caption")
        np.testing.assert_array_equal(image, scenes[i]["image"])
        assert caption == scenes[i]["caption"]
        assert record["short_caption"] == scenes[i]["short_caption"]
        assert record["key"] == f"SyntheticScenes/{i}"
        assert "labels" not in record  # arrays are not text: left out


def test_build_refuses_to_mix_with_existing_shards(tmp_path):
    build_array_record(SyntheticScenes(1, image_size=56), tmp_path, verbose=0)
    with pytest.raises(FileExistsError, match="data-00000-of-00001.array_record"):
        build_array_record(SyntheticScenes(2, image_size=56), tmp_path, verbose=0)
    summary = build_array_record(SyntheticScenes(2, image_size=56), tmp_path, name="more",
                                 verbose=0)
    assert summary["shards"] == ["more-00000-of-00001.array_record"]


def test_cli_data_build(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["data", "build", str(folder), str(out), "--records-per-shard", "4", "--name", "web",
            "--workers", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {GOOD} in 3 shards" in printed and "missing_image 1" in printed
    assert len(ArrayRecordSource(str(out / "web-*.array_record"))) == GOOD

    assert cli.main(["data", "build", "synthetic:3", str(tmp_path / "scenes"),
                     "--caption-field", "short_caption", "--caption-field", "caption"]) == 0
    summary = json.loads((tmp_path / "scenes" / "summary.json").read_text())
    assert summary["records_written"] == 3
    assert summary["caption_fields"] == ["short_caption", "caption"]


@pytest.mark.parametrize("source, message", [
    ("{tmp}/missing/*.tar", "{tmp}/missing/*.tar: no such file"),
    ("synthetic:none", "synthetic:none: expected synthetic:N"),
    ("{tmp}/bad", "{tmp}/bad: no record passed the checks"),
    ("{tmp}/out", "already holds data-00000-of-00001.array_record"),
])
def test_cli_data_build_errors(source, message, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "captions.jsonl").write_text('{"image": "none.jpg", "caption": "x"}\n')
    build_array_record(SyntheticScenes(1, image_size=56), tmp_path / "out", verbose=0)
    source = source.format(tmp=tmp_path)
    out = str(tmp_path / "out") if source.endswith("out") else str(tmp_path / "new")
    with pytest.raises(SystemExit) as raised:
        cli.main(["data", "build", source, out])
    assert raised.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ov2 data: error: ") and len(err.splitlines()) == 1
    assert message.format(tmp=tmp_path) in err


def planted(count=30):
    """`count` tiny records, in order; every 7th from 3 has an empty caption
    and every 11th from 5 an empty image."""
    rows = [{"image": jpeg(i), "caption": f"record {i}"} for i in range(count)]
    for i in range(3, count, 7):
        rows[i]["caption"] = " "
    for i in range(5, count, 11):
        rows[i]["image"] = b""
    return rows


class Flaky:
    """Records that fail to read at `fail_at`, as a worker that crashes mid-shard.
    Its repr leaves `fail_at` out: the build with it and without is one build."""

    def __init__(self, rows, fail_at=None):
        self.rows, self.fail_at = rows, fail_at

    def __len__(self):
        return len(self.rows)

    def __repr__(self):
        return f"Flaky({len(self.rows)} records)"

    def __getitem__(self, index):
        if index == self.fail_at:
            raise RuntimeError(f"planted failure at record {index}")
        return self.rows[index]


def shard_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.array_record"))}


def test_build_with_workers_matches_one_process(tmp_path):
    rows = planted()
    one = build_array_record(rows, tmp_path / "one", records_per_shard=5, verbose=0)
    two = build_array_record(rows, tmp_path / "two", records_per_shard=5, num_workers=2,
                             verbose=0)
    assert two == one
    assert one["shards"] == [f"data-0000{k}-of-00006.array_record" for k in range(6)]
    assert one["records_written"] == 23
    assert one["skipped"] == {"empty_caption": 4, "empty_image": 3}
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")
    built = ArrayRecordSource(str(tmp_path / "two" / "*.array_record"))
    good = [i for i in range(30) if i % 7 != 3 and i % 11 != 5]
    assert [built[n]["key"] for n in range(len(built))] == [f"list/{i}" for i in good]
    assert [built[n]["image"] for n in range(len(built))] == [rows[i]["image"] for i in good]
    # Shard k holds source records 5k to 5k + 4: shard 1 lost 5 (image) and 3 is in shard 0.
    assert len(ArrayRecordSource(str(tmp_path / "two" / one["shards"][1]))) == 4


def test_interrupted_build_resumes_to_the_same_output(tmp_path, capsys):
    rows = planted()
    reference = build_array_record(Flaky(rows), tmp_path / "reference", records_per_shard=5,
                                   verbose=0)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="planted failure at record 12"):
        build_array_record(Flaky(rows, fail_at=12), out, records_per_shard=5, num_workers=2,
                           verbose=0)
    # Shards 0 and 1 were under way when shard 2 failed: finished and logged.
    # Any shard under a final name is whole; no summary yet.
    finished = shard_bytes(out)
    assert {"data-00000-of-00006.array_record", "data-00001-of-00006.array_record"} <= set(finished)
    assert "data-00002-of-00006.array_record" not in finished
    assert all(reference_bytes == finished.get(name, reference_bytes)
               for name, reference_bytes in shard_bytes(tmp_path / "reference").items())
    assert not (out / "summary.json").exists() and not list(out.glob(".*"))
    # Worse: a finished shard lost, a stray temporary file, a log line cut short.
    (out / "data-00000-of-00006.array_record").unlink()
    (out / ".data-00002-of-00006.array_record.partial").write_bytes(b"half a shard")
    with open(out / "data.build.jsonl", "a") as log:
        log.write('{"shard": 5, "rec')
    kept = (out / "data-00001-of-00006.array_record").stat().st_ino

    summary = build_array_record(Flaky(rows), out, records_per_shard=5, num_workers=2)
    assert "Resuming the build in" in capsys.readouterr().out
    assert summary == reference
    assert json.loads((out / "summary.json").read_text()) == reference
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")
    assert (out / "data-00001-of-00006.array_record").stat().st_ino == kept  # not rebuilt
    assert not list(out.glob(".*"))
    # Once more over the finished build: nothing to build, the same summary.
    inodes = {path.name: path.stat().st_ino for path in out.glob("*.array_record")}
    assert build_array_record(Flaky(rows), out, records_per_shard=5, verbose=0) == reference
    assert {path.name: path.stat().st_ino for path in out.glob("*.array_record")} == inodes


def test_resume_with_other_options_is_refused(tmp_path):
    rows = planted(12)
    build_array_record(rows, tmp_path, records_per_shard=5, verbose=0)
    before = shard_bytes(tmp_path)
    for source, options, differences in [
        (rows, {"records_per_shard": 4}, "records_per_shard was 5, now 4"),
        (rows, {"caption_fields": "alt"}, "caption_fields was ['caption'], now ['alt']"),
        (rows[:10], {}, "source was 'list of 12 records', now 'list of 10 records'; "
                        "records was 12, now 10"),
    ]:
        options = {"records_per_shard": 5, **options}
        message = (f"already holds data-00000-of-00003.array_record of another build "
                   f"({differences}); run that build to resume it")
        with pytest.raises(FileExistsError, match=re.escape(message)):
            build_array_record(source, tmp_path, verbose=0, **options)
    assert shard_bytes(tmp_path) == before
