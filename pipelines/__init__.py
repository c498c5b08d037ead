"""Prefect flows and deployments around the codec (the only package that imports Prefect)."""

import os

# A flow run without a Prefect API URL starts an ephemeral server; Prefect waits 20 s for it by
# default, which a loaded 2-core machine exceeds (the run then fails). A user's own value wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
