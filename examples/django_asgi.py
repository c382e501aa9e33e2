"""Quick start: Django -- in your project's asgi.py."""

import os

from django.core.asgi import get_asgi_application

from lockgate import Gate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

# Settings from BACKPRESSURE_* environment variables (ENABLE_BACKPRESSURE=false turns it off).
application = Gate(get_asgi_application())
# run with: uvicorn examples.django_asgi:application
