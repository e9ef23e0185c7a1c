"""The charge of one request: its bill, the outcome of uncertain ledger calls, idempotent
replays, keep-alive of leases and holds, settling once the app answered."""
