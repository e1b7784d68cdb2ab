"""Held-out records: a fixed slice of a source that training never reads."""


class RecordRange:
    """Records `start` to `stop` of `source`, as a source of their own
    (picklable, so Grain workers can read it)."""

    def __init__(self, source, start, stop):
        if not 0 <= start <= stop <= len(source):
            raise ValueError(
                f"RecordRange({start}, {stop}) does not fit a source of {len(source)} records."
            )
        self.source, self.start, self.stop = source, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of a range of {len(self)}")
        return self.source[self.start + index]

    def __repr__(self):
        return f"RecordRange({self.source!r}, {self.start}, {self.stop})"


def split_held_out(source, count):
    """(training records, held-out records). A source that makes records of
    its own kind that it never contains (`held_out(count)`, as the built-in
    scenes) is trained on whole; any other has its last `count` records (half
    of a source of fewer than 2 * `count`) set aside, never trained on."""
    if callable(getattr(source, "held_out", None)):
        return source, source.held_out(count)
    held = min(count, len(source) // 2)
    if held < 1:
        raise ValueError(
            f"The data has {len(source)} record(s); pretraining sets the last ones "
            "aside as held out and needs at least 2."
        )
    cut = len(source) - held
    return RecordRange(source, 0, cut), RecordRange(source, cut, len(source))
