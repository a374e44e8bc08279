"""Redis restart: steady uploads while the runner kills Valkey (SIGKILL) and starts it
again on the same port and data directory. The gateway answers 503
buffer-unavailable meanwhile; clients wait, resume through HEAD and finish. Not
one acknowledged byte may be missing afterwards.

    locust -f loadtest/scenarios/redis_restart.py --headless --host http://127.0.0.1:8080
    (the fault itself needs the runner: python -m loadtest.rehearse redis-restart)
"""

from loadtest.scenarios.common import RehearsalShape, TusOperator, setup

P = setup(surge="flat", think=1.0, timeout=10.0, close_fraction=0.8)


class RestartOperator(TusOperator):
    network_timeout = connection_timeout = P.timeout


class RestartShape(RehearsalShape):
    pass
