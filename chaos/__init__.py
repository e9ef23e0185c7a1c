"""The fault suite (``make chaos``): the example app with two workers against private
PostgreSQL and Redis, under bounded concurrent load with keyed retries, while Redis is killed,
PostgreSQL restarted (fast and immediate), a worker SIGKILLed and an event loop stalled; then
the ledger is reconciled against what the clients saw and the charge contract's bars checked.

Modules: ``contract`` (the header names and bars relied on), ``services`` (private servers),
``appserver`` (uvicorn and its workers), ``load`` (the clients), ``faults`` (the schedule),
``reconcile`` (the ledger against the clients), ``report`` (table and JSON), ``run`` (main).
"""
