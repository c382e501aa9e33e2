"""Settings from the environment: the original plan's .env works unchanged."""

from lockgate import GateSettings

# BACKPRESSURE_MAX_CONCURRENT=80
# BACKPRESSURE_QUEUE_CAPACITY=500
# BACKPRESSURE_WAIT_TIMEOUT=5
# BACKPRESSURE_LANES__LOW__BORROW_LIMIT=1
# ENABLE_BACKPRESSURE=true          (false: the gate becomes a pass-through)
settings = GateSettings()  # reads BACKPRESSURE_* (and ENABLE_BACKPRESSURE)

# The original capacity plan's environments, with overrides:
staging = GateSettings.preset("staging", target_wait=0.1)
