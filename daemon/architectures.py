"""The architectures of runs, as the effect handlers of this replica read them.

A run's architecture is its largest field and never changes after the start, and only the
handlers use it: the store's transactions leave it out of their reads (a Firestore field mask)
and the handlers get it from here, read once per run and replica (a small LRU; a miss is one
read of that one field).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from google.cloud import firestore


class Architectures:
    def __init__(self, runs: firestore.CollectionReference, size: int = 512) -> None:
        self._runs = runs
        self._size = size
        self._items: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, run_id: str, architecture: Mapping[str, Any]) -> None:
        with self._lock:
            self._items[run_id] = architecture
            self._items.move_to_end(run_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def of(self, run_id: str) -> Mapping[str, Any]:
        with self._lock:
            found = self._items.get(run_id)
            if found is not None:
                self._items.move_to_end(run_id)
                return found
        snap = self._runs.document(run_id).get(field_paths=["architecture"])
        architecture = ((snap.to_dict() or {}).get("architecture") if snap.exists else None) or {}
        if architecture:
            self.remember(run_id, architecture)
        return architecture
