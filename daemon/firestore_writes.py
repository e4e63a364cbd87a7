"""The writes of the store's transactions, built as raw protobufs.

``transaction.set``/``update``/``create`` walk the data for sentinels and field paths and wrap
every value in a proto-plus message: about a fifth of the daemon's CPU per transition
(issue 15.2d). The store's hot writes are plain data (no sentinels, top-level keys), so they
are encoded here straight into the ``Write`` protobuf the commit sends; a value of a type this
encoder does not know is handed to the library's own ``encode_value``. The result is the same
write the library builds (tests/integration/test_firestore_tx.py reads it back).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud._helpers import _datetime_to_pb_timestamp  # type: ignore[attr-defined,unused-ignore]
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import write as write_types

_Write = write_types.Write.pb()  # the raw protobuf class under the proto-plus wrapper


def set_doc(transaction: firestore.Transaction, ref: Any, data: Mapping[str, Any]) -> None:
    """``transaction.set(ref, data)`` for plain data: the document becomes exactly ``data``."""
    transaction._add_write_pbs([_write(ref, data)])


def create_doc(transaction: firestore.Transaction, ref: Any, data: Mapping[str, Any]) -> None:
    """``transaction.create(ref, data)``: the commit fails if the document exists."""
    write = _write(ref, data)
    write.current_document.exists = False
    transaction._add_write_pbs([write])


def update_doc(transaction: firestore.Transaction, ref: Any, data: Mapping[str, Any]) -> None:
    """``transaction.update(ref, data)`` with top-level keys: those fields replaced, the document
    must exist."""
    write = _write(ref, data)
    write.update_mask.field_paths.extend(sorted(FieldPath(key).to_api_repr() for key in data))
    write.current_document.exists = True
    transaction._add_write_pbs([write])


def _write(ref: Any, data: Mapping[str, Any]) -> Any:
    write = _Write()
    write.update.name = ref._document_path
    fields = write.update.fields
    for key, value in data.items():
        _encode(value, fields[key])
    return write


def _encode(value: Any, out: Any) -> None:
    """Fill the ``Value`` protobuf ``out`` as ``_helpers.encode_value(value)`` would."""
    if value is None:
        out.null_value = 0
    elif isinstance(value, bool):  # before int: bool is an int
        out.boolean_value = value
    elif isinstance(value, int):
        out.integer_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, DatetimeWithNanoseconds):
        out.timestamp_value.CopyFrom(value.timestamp_pb())
    elif isinstance(value, datetime.datetime):
        out.timestamp_value.CopyFrom(_datetime_to_pb_timestamp(value))
    elif isinstance(value, dict):
        out.map_value.SetInParent()  # an empty map is still a map
        fields = out.map_value.fields
        for key, item in value.items():
            _encode(item, fields[key])
    elif isinstance(value, list | tuple):
        out.array_value.SetInParent()
        values = out.array_value.values
        for item in value:
            _encode(item, values.add())
    else:  # bytes, references, geo points, vectors …: the library's encoding
        out.CopyFrom(document_types.Value.pb(_helpers.encode_value(value)))
