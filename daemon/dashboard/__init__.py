"""The live web dashboard the daemon serves at ``/dashboard/`` (README "Dashboard").

``app`` routes and streams, ``live`` the Firestore listeners behind the streams, ``access`` who
may look and who may press cancel/retry, ``graph`` the machine's picture, ``views`` the JSON the
page gets; ``static/`` is the one page and its script and style.
"""

from daemon.dashboard.app import Dashboard

__all__ = ["Dashboard"]
