"""daemon/firestore_writes.py builds the very Write protobufs the client library builds, and
daemon/firestore_tx.decode_fields reads documents back as the library does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import document

from daemon.firestore_tx import decode_fields
from daemon.firestore_writes import _encode, create_doc, set_doc, update_doc

VALUES = [
    None, True, False, 0, -(2**63), 2**63 - 1, 2.5, float("inf"), "", "ünï", b"\x00bytes",
    datetime(2026, 12, 5, 7, 30, 1, 123456, tzinfo=UTC),
    datetime(2026, 12, 5, 9, 0, tzinfo=timezone(timedelta(hours=2))),
    DatetimeWithNanoseconds(2026, 12, 5, nanosecond=123456789, tzinfo=UTC),
    {}, [], (), {"a": [1, {"b": None, "c": []}], "d": {}, "e": "x"}, [{"k": [2.0, "y"]}, []],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_each_value_is_encoded_as_the_library_encodes_it(value):
    ours = document.Value.pb()()
    _encode(value, ours)
    assert ours == document.Value.pb(_helpers.encode_value(value))


class _Recorder(SimpleNamespace):
    def _add_write_pbs(self, pbs):
        self.writes.extend(pbs)


def test_set_create_and_update_are_the_writes_the_library_makes():
    ref = SimpleNamespace(_document_path="projects/p/databases/(default)/documents/runs/r1")
    data = {"state": "building", "progress": {"build": {"a": "pending"}}, "n": 3}
    t = _Recorder(writes=[])
    set_doc(t, ref, data)
    create_doc(t, ref, data)
    update_doc(t, ref, data)
    library = [_helpers.pbs_for_set_no_merge(ref._document_path, data)[0],
               _helpers.pbs_for_create(ref._document_path, data)[0],
               _helpers.pbs_for_update(ref._document_path, data, None)[0]]
    assert [type(w).pb(w) if hasattr(type(w), "pb") else w for w in library] == t.writes


# ---- the reverse: daemon/firestore_tx.decode_fields reads what the library reads --------------

DOCUMENTS = [
    {},
    {"only": 1},  # one key: the library's BSON check applies
    {"state": "building", "version": 7, "ok": True, "ratio": 0.5, "none": None, "raw": b"\x01",
     "at": DatetimeWithNanoseconds(2026, 12, 5, 9, 30, 1, nanosecond=123456789, tzinfo=UTC),
     "progress": {"build": {"a": "pending", "b": "done"}, "empty": {}, "one": {"k": [1, 2]}},
     "items": [{"x": [], "y": None}, "s", 3, [2.5]]},
    {"__type__": "__vector__", "value": [1.0, 2.0]},  # a vector: left to the library
    {"v": {"__type__": "__vector__", "value": [0.5]}, "w": 1},
]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=repr)
def test_documents_are_decoded_as_the_library_decodes_them(doc):
    fields = document.MapValue.pb(document.MapValue(fields=_helpers.encode_dict(doc))).fields
    ours, theirs = decode_fields(fields, None), _helpers.decode_dict(fields, None)
    assert ours == theirs
    assert repr(ours) == repr(theirs)  # same types too (DatetimeWithNanoseconds, list, dict, Vector)
