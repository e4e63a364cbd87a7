"""Stateful fakes of the Google Cloud APIs that have no emulator, served over gRPC on loopback.

The real client libraries talk to them (insecure channel, anonymous credentials); each fake
enforces the rules of its API that matter to Podium and cites where the rule is documented.
"""
