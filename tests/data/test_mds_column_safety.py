"""MDS shards whose columns would run code when decoded (flexbert/data/sources.py): mosaicml-streaming's `pkl`
encoding unpickles every sample, and `LocalDataset` (streaming: false) decodes every column of a sample without
streaming's own check. Both readers must refuse such shards before any sample is decoded, naming shard and column."""

import numpy as np
import pytest
from streaming import MDSWriter

from flexbert.data import open_source
from flexbert.errors import DataError


class TouchesMarker:
    """A value whose unpickling creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write(folder, columns, samples):
    with MDSWriter(out=str(folder / "train"), columns=columns) as writer:
        for sample in samples:
            writer.write(sample)
    return folder


def _docs(n=4):
    return [np.array([2, 5 + i, 6, 3], dtype=np.uint16) for i in range(n)]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("layout", ["extra_pkl_column", "pkl_input_ids"])
def test_pickle_columns_are_refused_before_any_sample_is_decoded(tmp_path, streaming, layout):
    marker = tmp_path / "payload-ran"
    if layout == "extra_pkl_column":  # the ids are fine; LocalDataset decodes the other column too
        columns, column = {"input_ids": "ndarray:uint16", "meta": "pkl"}, "meta"
        samples = [{"input_ids": d, "meta": TouchesMarker(marker)} for d in _docs()]
    else:
        columns, column = {"input_ids": "pkl"}, "input_ids"
        samples = [{"input_ids": TouchesMarker(marker)} for _ in range(4)]
    folder = _write(tmp_path / "data", columns, samples)
    with pytest.raises(DataError) as refused:
        source = open_source(str(folder), None, "train", streaming=streaming)
        source.get(0)
    assert not marker.exists(), "the payload ran"
    message = str(refused.value)
    assert "shard.00000.mds" in message and f"'{column}'" in message and "pkl" in message and "\n" not in message


@pytest.mark.parametrize("encoding", ["jpeg", "pkl:x", "no_such_encoding"])
def test_columns_outside_the_data_encodings_are_refused(tmp_path, encoding):
    folder = _write(tmp_path / "data", {"input_ids": "ndarray:uint16", "text": "str"},
                    [{"input_ids": d, "text": "a b"} for d in _docs()])
    index = folder / "train" / "index.json"
    index.write_text(index.read_text().replace('"str"', f'"{encoding}"'))
    for streaming in (False, True):
        with pytest.raises(DataError, match=f"column 'text' has encoding '{encoding}'"):
            open_source(str(folder), None, "train", streaming=streaming)


def test_data_encodings_still_read(tmp_path):
    """What data_prep writes (ndarray ids) plus the plain data columns of other MDS writers (str, int, json)."""
    docs = _docs()
    folder = _write(tmp_path / "data", {"input_ids": "ndarray:uint16", "url": "str", "n": "int", "meta": "json"},
                    [{"input_ids": d, "url": "u", "n": 1, "meta": {"a": 1}} for d in docs])
    for streaming in (False, True):
        source = open_source(str(folder), None, "train", streaming=streaming)
        assert all((source.get(i) == d).all() for i, d in enumerate(docs))
