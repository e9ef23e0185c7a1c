"""A backend shaped like FastAPI's full-stack template, with credit-middleware adopted.

SQLModel models and Alembic migrations in the app's own PostgreSQL database, its own JWT login
(``/api/v1/login/access-token``) and signup (``/api/v1/users/signup``), ``APIRouter``s for
users and items included under ``/api/v1``, CORS for a browser frontend, and plain ``def``
handlers throughout. The lines marked ``# credits`` are the whole adoption: item routes are
metered (creating one is ``@priced``), signup provisions the trial, and the ledger keeps to a
schema of its own in the same database, so the app's ``alembic check`` stays clean.

``uvicorn examples.fullstack.main:app`` after ``alembic -c examples/fullstack/alembic.ini
upgrade head``; ``create_app(settings)`` builds one for tests.
"""
