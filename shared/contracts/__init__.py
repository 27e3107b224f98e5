"""Wire contracts: job specs, API schemas, queue and task names. No torch, no database."""
