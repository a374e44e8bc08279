"""Flaky network: a share of PATCHes is cut mid-body (headers and part of the body sent
on a raw socket, a stall, then FIN or RST) and the client resumes through HEAD. Some
clients send no Upload-Checksum (as tus-js-client), so the server keeps the part that
arrived; with a checksum it keeps nothing of the cut PATCH. A share of clients retries
at once, ignoring Retry-After, next to clients that honour it.

    REHEARSE_CUT_RATE=0.2 REHEARSE_IMPATIENT_SHARE=0.3 \\
    locust -f loadtest/scenarios/flaky_network.py --headless --host http://127.0.0.1:8080
"""

from loadtest.scenarios.common import RehearsalShape, TusOperator, setup

P = setup(surge="flat", think=1.0, cut_rate=0.2, stall=0.3, impatient_share=0.3, no_checksum_share=0.3,
          timeout=5.0, close_fraction=0.8)


class FlakyOperator(TusOperator):
    network_timeout = connection_timeout = P.timeout


class FlakyShape(RehearsalShape):
    pass
