"""The ``local`` IAM backend: a registry in Firestore with simulated propagation.

Collection ``podium_local_iam``: one document per account (``account~<email>``) and one per
binding (``binding~<sha1 of member|role|type|resource>``). Each has ``created_at`` and
``visible_at = created_at + settings.local_iam_delay_seconds``; the visibility checks compare
``visible_at`` with now, so the same polling path as on Google Cloud runs locally (the machine's
timer re-checks until the change is "visible").

Documents are written with ``create`` (fails if the document exists), so a second ensure/add
keeps the first ``created_at``: idempotent, and additive by construction (one document per
member, role and resource; nothing is ever replaced).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from handlers.iam.base import api_error, describe, resource_name
from machines.iam_plan import IamBinding, ServiceAccountPlan

if TYPE_CHECKING:
    from handlers.settings import HandlerSettings

__all__ = ["COLLECTION", "LocalIam", "account_doc_id", "binding_doc_id"]

COLLECTION = "podium_local_iam"


def account_doc_id(email: str) -> str:
    return f"account~{email}"


def binding_doc_id(binding: IamBinding, project: str) -> str:
    key = "|".join(
        (binding.member, binding.role, binding.resource_type, resource_name(binding, project))
    )
    return f"binding~{hashlib.sha1(key.encode()).hexdigest()}"


class LocalIam:
    """``IamBackend`` on the Firestore emulator (or any Firestore)."""

    def __init__(
        self,
        settings: HandlerSettings,
        *,
        client: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.project = settings.project
        self.delay = timedelta(seconds=settings.local_iam_delay_seconds)
        self._client = client
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    @property
    def collection(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from google.cloud import firestore

                    self._client = firestore.Client(project=self.project)
        return self._client.collection(COLLECTION)

    # ---- IamBackend -------------------------------------------------------------------------
    def ensure_service_account(self, account: ServiceAccountPlan) -> str:
        self._create(
            account_doc_id(account.email),
            {
                "type": "account",
                "email": account.email,
                "account_id": account.account_id,
                "service": account.service,
                "kind": account.kind,
                "display_name": f"podium {account.kind} {account.service}",
            },
            f"creating service account {account.email}",
        )
        return account.email

    def add_binding(self, binding: IamBinding) -> None:
        self._create(
            binding_doc_id(binding, self.project),
            {
                "type": "binding",
                "member": binding.member,
                "role": binding.role,
                "resource_type": binding.resource_type,
                "resource_id": binding.resource_id,
                "resource": resource_name(binding, self.project),
                "resource_location": binding.resource_location,
                "reason": binding.reason,
                "phase": binding.phase,
            },
            f"granting {describe(binding)}",
        )

    def account_visible(self, email: str) -> bool:
        return self._visible(account_doc_id(email), f"reading service account {email}")

    def bindings_visible(self, bindings: Sequence[IamBinding]) -> list[bool]:
        return [
            self._visible(binding_doc_id(b, self.project), f"reading the binding {describe(b)}")
            for b in bindings
        ]

    def remove_service_account(self, email: str) -> bool:
        ref = self.collection.document(account_doc_id(email))
        try:
            existed = ref.get().exists
            ref.delete()  # every account in the local ledger is one Podium created
        except Exception as exc:  # noqa: BLE001 - mapped to a HandlerError
            raise api_error(exc, f"deleting service account {email}") from exc
        return bool(existed)

    def in_project(self, project: str) -> LocalIam:
        return self  # one local ledger per daemon: its records keep the daemon's project

    # ---- internals --------------------------------------------------------------------------
    def _create(self, doc_id: str, fields: dict[str, Any], what: str) -> bool:
        """Create the document; False if it already existed (its first ``created_at`` stays)."""
        now = self._clock()
        try:
            self.collection.document(doc_id).create(
                {**fields, "created_at": now, "visible_at": now + self.delay}
            )
        except gexc.AlreadyExists:
            return False
        except Exception as exc:  # noqa: BLE001 - mapped to a HandlerError
            raise api_error(exc, what) from exc
        return True

    def _visible(self, doc_id: str, what: str) -> bool:
        try:
            snap = self.collection.document(doc_id).get()
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, what) from exc
        if not snap.exists:
            return False
        visible_at = snap.get("visible_at")
        return visible_at is not None and visible_at <= self._clock()
