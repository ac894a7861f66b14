"""The cloud side: device registry, command client, time service (and later ingest and ledger)."""
