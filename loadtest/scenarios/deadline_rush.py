"""Deadline rush: the operators of many pairs upload supporter lists and scans, most of
it in the last part of the window (a LoadTestShape ramps the operators online and
shortens their pauses). The server's own window closes during the run: creations
after close must be refused (403 window-closed), appends to uploads created before
close go on during the grace period. Each operator probes once after close.

    locust -f loadtest/scenarios/deadline_rush.py --headless --host http://127.0.0.1:8080
    (REHEARSE_PAIRS, REHEARSE_OPERATORS, REHEARSE_ROWS, REHEARSE_SCANS, REHEARSE_CHUNK,
     REHEARSE_DURATION, REHEARSE_CLOSE_AT, REHEARSE_SURGE=ramp|step|flat, ...; see common.Params)
"""

from loadtest.scenarios.common import RehearsalShape, TusOperator, setup

P = setup(surge="ramp", surge_share=0.4, base_share=0.25, think=1.0, probe_after_close=True)


class DeadlineOperator(TusOperator):
    network_timeout = connection_timeout = P.timeout


class DeadlineShape(RehearsalShape):
    pass
