"""The operator side: broker, registry, scheduler, verifier, ledger and settlement."""
