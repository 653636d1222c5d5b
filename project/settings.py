"""Settings: every value comes from the environment, read once here (see .env.example and the README)."""

from __future__ import annotations

import logging
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
_DEV_SECRET = "dev-only-insecure-secret-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (set DEBUG=1 for development)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "streams",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files from the ASGI app: no CDN, no extra server
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
    )
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True  # serve from the apps' static folders too, without collectstatic in development
LIVE_PAGE_TRADES = env_int("LIVE_PAGE_TRADES", 200, minimum=1)  # latest trades the live page opens with
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker, channel layer, hand-off buffer, leases -------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ROUTES = {"workers.tasks.run_stream": {"queue": "streams"}}
# One message at a time per worker slot: a stream task occupies its slot for as long as it runs.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False  # stream tasks must not be redelivered past visibility_timeout (celery#5935)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    # A broker connection that stops answering (a Redis restart, a network partition) is noticed within
    # seconds instead of kombu's 50 s stale-BRPOP check: a streams worker must pick up the tasks the
    # supervisor dispatches after an outage. kombu's BRPOP waits 1 s at a time, well under the timeout.
    "socket_timeout": 10, "socket_connect_timeout": 5, "socket_keepalive": True, "health_check_interval": 10,
}
CELERY_WORKER_SEND_TASK_EVENTS = True  # Flower shows the stream tasks and their stats live
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # LOGGING below configures the root logger; no second handler

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8's 5 s default socket timeout breaks the layer's blocking reads (channels_redis#422).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}

# --- Binance endpoints (point them at the fake exchange offline) --------------------------------------
BINANCE_WS_URL = env_str("BINANCE_WS_URL", "wss://stream.binance.com:9443")
BINANCE_REST_URL = env_str("BINANCE_REST_URL", "https://api.binance.com")

# --- Stream client tunables (documented in the README) ------------------------------------------------
BINANCE_BACKOFF_BASE = env_float("BINANCE_BACKOFF_BASE", 1.0, minimum=0.0)
BINANCE_BACKOFF_CAP = env_float("BINANCE_BACKOFF_CAP", 60.0, minimum=0.0)
BINANCE_BACKOFF_RESET_AFTER = env_float("BINANCE_BACKOFF_RESET_AFTER", 60.0, minimum=0.0)
BINANCE_SILENCE_TIMEOUT = env_float("BINANCE_SILENCE_TIMEOUT", 10.0, minimum=0.1)
BINANCE_PROBE_TIMEOUT = env_float("BINANCE_PROBE_TIMEOUT", 5.0, minimum=0.1)
BINANCE_ROTATE_AFTER = env_float("BINANCE_ROTATE_AFTER", 23.5 * 3600, minimum=1.0)
BINANCE_BACKFILL_MAX_TRADES = env_int("BINANCE_BACKFILL_MAX_TRADES", 100_000, minimum=0)
BINANCE_QUEUE_SIZE = env_int("BINANCE_QUEUE_SIZE", 10_000, minimum=1)

# --- Celery-supervised collection (workers/) ----------------------------------------------------------
# The hand-off buffer: a Redis Stream read by the flush task through a consumer group.
COLLECTOR_FLUSH_INTERVAL = env_float("COLLECTOR_FLUSH_INTERVAL", 1.0, minimum=0.1)      # s, beat schedule
COLLECTOR_FLUSH_BATCH = env_int("COLLECTOR_FLUSH_BATCH", 5_000, minimum=1)              # trades per write
COLLECTOR_BUFFER_MAX_TRADES = env_int("COLLECTOR_BUFFER_MAX_TRADES", 2_000_000, minimum=1000)
COLLECTOR_RECLAIM_IDLE = env_float("COLLECTOR_RECLAIM_IDLE", 60.0, minimum=1.0)         # s before reclaiming
# Leases and heartbeats: one owner per stream, restarted when silent.
COLLECTOR_HEARTBEAT_INTERVAL = env_float("COLLECTOR_HEARTBEAT_INTERVAL", 5.0, minimum=0.1)
COLLECTOR_LEASE_TTL = env_float("COLLECTOR_LEASE_TTL", 30.0, minimum=1.0)
COLLECTOR_STALE_AFTER = env_float("COLLECTOR_STALE_AFTER", 60.0, minimum=1.0)  # heartbeat or data age
COLLECTOR_START_TIMEOUT = env_float("COLLECTOR_START_TIMEOUT", 30.0, minimum=1.0)  # dispatched, not started: again
COLLECTOR_SUPERVISE_INTERVAL = env_float("COLLECTOR_SUPERVISE_INTERVAL", 10.0, minimum=1.0)
COLLECTOR_AUDIT_INTERVAL = env_float("COLLECTOR_AUDIT_INTERVAL", 300.0, minimum=10.0)
# Ids checked per stream and pass above its verified watermark (workers.audit): the whole stored range is
# covered, a slice per pass.
COLLECTOR_AUDIT_SCAN = env_int("COLLECTOR_AUDIT_SCAN", 1_000_000, minimum=1000)
# Connection attempts of all stream tasks together (the exchange allows 300 per 5 minutes per IP).
COLLECTOR_CONNECTION_BUDGET = env_int("COLLECTOR_CONNECTION_BUDGET", 250, minimum=1)
COLLECTOR_CONNECTION_WINDOW = env_float("COLLECTOR_CONNECTION_WINDOW", 300.0, minimum=1.0)

# --- Logs (README "Logs"): one line per record on stderr, the stream id on every line of a stream ------
# Celery's worker and beat apply this too (project/celery.py), so LOG_LEVEL is the one knob: celery -l is
# ignored. LOG_FORMAT=json writes one JSON object per line for log shippers.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
if not isinstance(logging.getLevelName(LOG_LEVEL), int):
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a level (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not a log format (plain or json)")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"stream": {"()": "project.logs.StreamFilter"}},
    "formatters": {"plain": {"()": "project.logs.PlainFormatter"}, "json": {"()": "project.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["stream"],
                             "level": LOG_LEVEL}},  # also caps loggers that set their own level (uvicorn's)
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # One line per REST request is noise at INFO; failures are logged by the REST client itself.
        "httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"},
        # Django's and uvicorn's own handlers (unescaped, their own format) replaced by the one above.
        "django": {"level": "NOTSET"}, "django.server": {"propagate": True},
        "uvicorn": {"propagate": True}, "uvicorn.access": {"propagate": True},
    },
}
