"""`open_source`: the right source for whatever path a user points at."""

from pathlib import Path

from keras_ov2.data.array_record_source import ArrayRecordSource
from keras_ov2.data.jsonl_folder_source import INDEX
from keras_ov2.data.jsonl_folder_source import JsonlFolderSource
from keras_ov2.data.parquet_source import ParquetSource
from keras_ov2.data.source_base import LAYOUTS
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.source_base import expand
from keras_ov2.data.webdataset_source import WebDatasetSource

# In order of preference for a folder: img2dataset puts a metadata .parquet
# (no images) beside each .tar shard.
SOURCES = {".array_record": ArrayRecordSource, ".tar": WebDatasetSource,
           ".parquet": ParquetSource}


def open_source(paths, **kwargs):
    """A path, glob or list of them -> the source that reads it; `kwargs` go to
    the source (e.g. `image_column=` for Parquet). A folder holding
    captions.jsonl, or a .jsonl file, is a `JsonlFolderSource`; another folder
    stands for its shards (*.array_record, else *.tar, else *.parquet)."""
    if isinstance(paths, (str, Path)) and Path(paths).is_dir():
        folder = Path(paths)
        if (folder / INDEX).is_file():
            return JsonlFolderSource(folder, **kwargs)
        for suffix, source in SOURCES.items():
            files = sorted(str(f) for f in folder.glob(f"*{suffix}") if f.is_file())
            if files:
                return source(files, **kwargs)
        raise SourceError(f"{folder}: a folder with neither {INDEX} nor shards; {LAYOUTS}.")
    files = expand(paths, f"image-caption data ({LAYOUTS})")
    if len(files) == 1 and files[0].endswith(".jsonl"):  # the index of a folder source
        return JsonlFolderSource(Path(files[0]).parent, index=Path(files[0]).name, **kwargs)
    suffixes = sorted({Path(f).suffix.lower() for f in files})
    if len(suffixes) != 1 or suffixes[0] not in SOURCES:
        named = ", ".join(f"*{s}" if s else "files without a suffix" for s in suffixes)
        raise SourceError(f"{paths}: {named}; {LAYOUTS}.")
    return SOURCES[suffixes[0]](files, **kwargs)
