"""Image-caption Parquet files: img2dataset's parquet output, Hugging Face datasets.

Parquet is read a row group at a time, so random access goes through an index
of row groups and keeps the last one read: Grain reads mostly neighbouring
rows within a worker's slice, and a whole row group would cost far too much
to decode again for every row.
"""

import bisect
import os

import pyarrow as pa
import pyarrow.parquet as pq

from keras_ov2.data.source_base import RESERVED
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.source_base import describe
from keras_ov2.data.source_base import error_record
from keras_ov2.data.source_base import expand

# Preferred by image_column=None when a file has several image-like columns.
IMAGE_COLUMNS = ("jpg", "image", "img", "jpeg", "png", "webp", "image_bytes")


def is_image_type(type_):
    """Binary, or Hugging Face's image struct {"bytes": binary, "path": string}."""
    if pa.types.is_struct(type_):
        index = type_.get_field_index("bytes")
        return index >= 0 and is_image_type(type_.field(index).type)
    return pa.types.is_binary(type_) or pa.types.is_large_binary(type_)


def is_text_type(type_):
    """A string, or a list of strings (several captions for one image)."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def pick_image_column(schema, path):
    """The image column of `schema` for image_column=None, or SourceError."""
    found = [f.name for f in schema if is_image_type(f.type)]
    preferred = [name for name in IMAGE_COLUMNS if name in found]
    if not found:
        raise SourceError(f"{path}: no image column (binary, or a {{bytes, path}} struct); "
                          f"its columns are {schema.names}.")
    return (preferred or found)[0]


class ParquetSource:
    """A Grain random-access source over Parquet files (a path, a glob, or a
    list of them), globs in sorted order.

    Args:
        paths: the files.
        image_column: the column of encoded image bytes, plain binary or a
            {"bytes", "path"} struct; None picks it (see `IMAGE_COLUMNS`).
        text_columns: the caption columns to keep; None keeps every string
            and list-of-strings column.

    A record holds "key" ("file.parquet/row"), "image" (the bytes as stored;
    absent when null) and the text columns as found (str, list, or None).
    """

    def __init__(self, paths, image_column=None, text_columns=None):
        self.paths = expand(paths, "Parquet files (*.parquet)")
        schemas, self._groups, self._ends = [], [], []  # groups: (file, group, first row)
        for file, path in enumerate(self.paths):
            try:
                metadata = pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                raise SourceError(f"{path}: not a Parquet file ({error}).") from None
            schemas.append(metadata.schema.to_arrow_schema())
            first = 0
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                self._groups.append((file, group, first))
                self._ends.append((self._ends[-1] if self._ends else 0) + rows)
                first += rows
        self.image_column = image_column or pick_image_column(schemas[0], self.paths[0])
        if text_columns is None:
            text_columns = [f.name for f in schemas[0]
                            if is_text_type(f.type) and f.name not in RESERVED]
        self.text_columns = list(text_columns)
        for path, schema in zip(self.paths, schemas):
            self._check_columns(path, schema)
        self._files, self._cache = {}, (None, None)

    def _check_columns(self, path, schema):
        if self.image_column not in schema.names:
            raise SourceError(f"{path}: no image column {self.image_column!r}; its columns "
                              f"are {schema.names}.")
        if not is_image_type(schema.field(self.image_column).type):
            raise SourceError(f"{path}: column {self.image_column!r} is "
                              f"{schema.field(self.image_column).type}, expected image bytes "
                              "(binary, or a {bytes, path} struct).")
        missing = [c for c in self.text_columns if c not in schema.names]
        if missing:
            raise SourceError(f"{path}: no column {missing[0]!r}; its columns are "
                              f"{schema.names}.")

    def __len__(self):
        return self._ends[-1] if self._ends else 0

    def __repr__(self):
        return (f"ParquetSource({describe(self.paths)}, {len(self)} records, "
                f"image_column={self.image_column!r})")

    def __getstate__(self):
        return {**self.__dict__, "_files": {}, "_cache": (None, None)}

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        position = bisect.bisect_right(self._ends, index)
        file, group, first = self._groups[position]
        row = index - (self._ends[position - 1] if position else 0)
        key = f"{os.path.basename(self.paths[file])}/{first + row}"
        try:
            table = self._row_group(file, group)
        except (OSError, pa.ArrowException) as error:
            return error_record(key, f"cannot read row group {group}: {error}")
        record = {"key": key}
        record.update((c, table.column(c)[row].as_py()) for c in self.text_columns)
        image = table.column(self.image_column)[row].as_py()
        if isinstance(image, dict):
            image = image.get("bytes")
        if image is not None:
            record["image"] = image
        return record

    def _row_group(self, file, group):
        cached, table = self._cache
        if cached != (file, group):
            if file not in self._files:
                self._files[file] = pq.ParquetFile(self.paths[file])
            columns = [self.image_column, *self.text_columns]
            table = self._files[file].read_row_group(group, columns=columns)
            self._cache = ((file, group), table)
        return table
