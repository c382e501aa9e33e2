"""Lanes: give a lower lane guaranteed seats so a flood of a higher lane cannot starve it."""

from lockgate import Gate, GateSettings, LanesSettings, Priority, Rule, RuleClassifier
from lockgate.testing import ok_app

# Defaults at 20 seats: critical 2 guaranteed (held idle for it), high 8, normal 8, low 2,
# all lendable. Above the guarantees seats go by priority, so a login flood (high) can take
# every seat but critical's 2. Guarantee half of normal's 8 seats to the reads:
settings = GateSettings(
    max_concurrent=20,
    lanes=LanesSettings.model_validate({"normal": {"lendable": 0.5}}),  # only what you name
)
# The same from the environment: BACKPRESSURE_LANES__NORMAL__LENDABLE=0.5

app = Gate(
    ok_app,  # your ASGI app
    settings,
    classifier=RuleClassifier([Rule(prefix="/api/v1/auth/", priority=Priority.HIGH)]),
)

normal = app.stats().lanes[Priority.NORMAL]
print(normal.nominal, normal.guaranteed, normal.max)  # 8 4 20
