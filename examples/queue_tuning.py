"""Queue management settings: the standing-queue target, deadlines, an adaptive limit."""

from lockgate import Gate, GateSettings, PriorityScheduler
from lockgate.limits import Gradient2Limit
from lockgate.testing import ok_app

settings = GateSettings(
    max_concurrent=20,
    queue_capacity=200,  # waiters at most, all lanes
    wait_timeout=3.0,  # longest wait while the queue is healthy
    target_wait=0.05,  # an overloaded lane sheds waiters older than max(50 ms, service time)
    deadline_headers="trusted",  # X-Request-Timeout / grpc-timeout ...
    trusted_proxies=("10.0.0.0/8",),  # ... believed only from your proxies
    limit="gradient2",  # move the limit from measured latency ("aimd" too)
)
app = Gate(ok_app, settings)

fifo = GateSettings(target_wait=None)  # queue management off: plain FIFO + wait_timeout

# An adaptive limit with your own parameters: here a wider latency band (default 1.25) for a
# service whose latency is noisy at any load, within 4..200 seats, starting at 200.
tuned = Gradient2Limit(200, 4, 200, rtt_tolerance=1.5)
backend = PriorityScheduler.from_settings(settings, limit_algorithm=tuned)
noisy = Gate(ok_app, settings, backend=backend)
