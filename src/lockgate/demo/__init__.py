"""``lockgate demo``: the bundled sample service flooded with and without the gate.

Also the pieces the benchmarks share with it: the sample service (``SampleService``, the
routes and their lanes), the open-loop load generator and the goodput arithmetic. Needs the
``lockgate[demo]`` extra (uvicorn, httptools, uvloop); nothing in ``lockgate`` imports it.
"""

from ._demo import run_demo as run_demo
from ._loadgen import Results as Results
from ._loadgen import Spec as Spec
from ._measure import GOOD_WITHIN as GOOD_WITHIN
from ._measure import Stats as Stats
from ._measure import goodput as goodput
from ._measure import percentile as percentile
from ._measure import tally as tally
from ._scenarios import Options as Options
from ._service import DEMO_ROUTES as DEMO_ROUTES
from ._service import ROUTES as ROUTES
from ._service import AppConfig as AppConfig
from ._service import Route as Route
from ._service import SampleService as SampleService
from ._service import classifier as classifier
from ._service import mean_service_time as mean_service_time

__all__ = [
    "DEMO_ROUTES", "GOOD_WITHIN", "ROUTES", "AppConfig", "Options", "Results", "Route",
    "SampleService", "Spec", "Stats", "classifier", "goodput", "mean_service_time",
    "percentile", "run_demo", "tally",
]
