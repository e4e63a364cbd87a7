"""Development tools: the emulator harness (`python -m devtools.emulators run -- CMD`) and the
fault points the fault-injection tests arm (`PODIUM_FAULTS`)."""
