"""IAM: service accounts and role bindings from the plan (``machines.iam_plan``), behind one
small interface (``IamBackend``) with a ``gcp`` and a ``local`` backend.

``effects`` holds the three effect handlers (``provision``, ``verify``, ``bind``) and
``invoker_bindings_for`` / ``apply_bindings`` for the deploy handler. The backends are imported
from their modules (``handlers.iam.gcp.GcpIam``, ``handlers.iam.local.LocalIam``) so that
importing this package pulls in no cloud client.
"""

from handlers.iam.base import IamBackend
from handlers.iam.effects import apply_bindings, bind, invoker_bindings_for, provision, verify

__all__ = ["IamBackend", "apply_bindings", "bind", "invoker_bindings_for", "provision", "verify"]
