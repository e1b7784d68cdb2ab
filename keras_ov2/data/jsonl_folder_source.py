"""A folder of image files described by captions.jsonl, the simplest layout to make by hand.

    folder/captions.jsonl   {"image": "cat.jpg", "caption": "a cat on a mat"}  (one per line)
    folder/cat.jpg

The index is read whole at construction, but each line is parsed only when its
record is read, so that a bad line is one "unreadable_record", not a crash.
"""

import json
from pathlib import Path

from keras_ov2.data.source_base import RESERVED
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.source_base import error_record

INDEX = "captions.jsonl"


class JsonlFolderSource:
    """A Grain random-access source over a folder holding captions.jsonl.

    Each non-blank line is a JSON object with "image" (a path relative to the
    folder) and caption fields. A record holds "key" (the image path, or
    "captions.jsonl:LINE" when the line names none), "image" (the file's bytes
    as stored) and the line's other fields as found. A line
    that is not a JSON object gives "unreadable_record"; a line without
    "image", or naming a file that does not exist, gives "missing_image".
    """

    def __init__(self, folder, index=INDEX):
        self.folder = Path(folder)
        path = self.folder / index
        if not path.is_file():
            raise SourceError(
                f"{self.folder}: expected a folder holding {index} (one "
                '{"image": "file.jpg", "caption": "..."} per line); found no ' f"{path}."
            )
        self.index = index
        # (line number, bytes); bytes so that one non-UTF-8 line is one bad record.
        lines = enumerate(path.read_bytes().splitlines(), start=1)
        self._lines = [(n, line) for n, line in lines if line.strip()]

    def __len__(self):
        return len(self._lines)

    def __repr__(self):
        return f"JsonlFolderSource({str(self.folder / self.index)!r}, {len(self)} records)"

    def __getitem__(self, index):
        number, line = self._lines[index]
        key = f"{self.index}:{number}"
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict):
                raise ValueError(f"a JSON {type(fields).__name__}, expected an object")
        except ValueError as error:  # also UnicodeDecodeError
            return error_record(key, f"bad JSON line: {error}")
        image = fields.get("image")
        fields = {k: v for k, v in fields.items() if k not in RESERVED}
        if image is None:
            return {**fields, "key": key}  # no "image": missing_image
        if not isinstance(image, str):
            return error_record(key, f'"image" is {image!r}, expected a file path')
        path = self.folder / image
        record = {**fields, "key": image}
        try:
            record["image"] = path.read_bytes()
        except OSError as error:
            return {**record, "error": "missing_image", "detail": f"cannot read {path}: "
                    f"{error.strerror or error}"}
        return record
