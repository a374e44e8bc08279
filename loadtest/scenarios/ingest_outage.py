"""Ingest outage: steady uploads while the runner stops the ingesters for a while
(SIGSTOP, or SIGTERM and a restart later). With a small buffer budget
(UNGGAH_BUFFER_BUDGET_BYTES) the buffer fills in seconds: new uploads are refused
(503 buffer-high), then appends (503 buffer-full); when the ingesters are back the
buffer drains and the clients, honouring Retry-After, finish.

    locust -f loadtest/scenarios/ingest_outage.py --headless --host http://127.0.0.1:8080
    (the fault itself needs the runner: python -m loadtest.rehearse ingest-outage)
"""

from loadtest.scenarios.common import RehearsalShape, TusOperator, setup

P = setup(surge="flat", think=1.0, close_fraction=0.8)


class OutageOperator(TusOperator):
    network_timeout = connection_timeout = P.timeout


class OutageShape(RehearsalShape):
    pass
