"""Loading never executes pickled code: a malicious pickle planted where each loader reads is refused, and the
payload never runs (it would create a marker file)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext.loaders.formats import FormatError


class _Payload:
    """Unpickling this calls `open(marker, "w")`: the marker file appears iff pickled code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "PWNED")
    yield path
    assert not os.path.exists(path), "pickled code was executed while loading"


def test_dictionary_learning_ae_pt(tmp_path, marker):
    """ae.pt is the one peer format that is a torch pickle: read with weights_only=True, which refuses code."""
    from matryoshka_ext.integrations.dictionary_learning import load_dictionary_learning

    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKSAE"}}))
    torch.save({"W_enc": torch.randn(4, 8), "evil": _Payload(marker)}, folder / "ae.pt")
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        load_dictionary_learning(folder)
    with pytest.raises(FormatError):  # the format-detecting front door does not read ae.pt at all
        mx.load_transcoder(str(folder))


def test_gemma_scope_npz_object_array(tmp_path, marker):
    """params.npz with a pickled object array: np.load(allow_pickle=False) refuses it."""
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "params.npz", "w") as z:
        z.writestr("W_enc.npy", buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        mx.load_transcoder(str(tmp_path / "params.npz"))


def test_pickle_file_is_not_a_format(tmp_path, marker):
    """A bare pickle (or a .pt full of objects) is not a format we read, whatever it is named."""
    for name in ("transcoder.pt", "model.pkl", "model.safetensors"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        with open(folder / name, "wb") as fh:
            pickle.dump(_Payload(marker), fh)
        with pytest.raises(FormatError, match=name.replace(".", r"\.")):
            mx.load_transcoder(str(folder / name))
