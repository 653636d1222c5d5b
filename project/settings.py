"""Settings: every value comes from the environment, read once here (see .env.example and docs/configuration.md)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.env import (
    env_bool,
    env_days,
    env_float,
    env_header,
    env_int,
    env_list,
    env_origins,
    env_secret,
    env_str,
    env_url,
)
from project.envfiles import EnvFileError, env_file_load

BASE_DIR = Path(__file__).resolve().parent.parent

# A command typed in a shell reads .env as make run's processes do (project/envfiles.py says when not).
try:
    env_file_load()
except EnvFileError as exc:
    raise ImproperlyConfigured(str(exc)) from None

DEBUG = env_bool("DEBUG", False)
_DEV_SECRET = "dev-only-insecure-secret-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)
# With DEBUG off, a short, repetitive or placeholder key (SECRET_KEY=change-me) stops start-up: no known default.
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET) if DEBUG else env_secret("SECRET_KEY", "")
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
    "web",
    "benchmarks",
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

ROOT_URLCONF = "web.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "web.asgi.application"

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
# s: the live page's opening of a symbol (the day's candles, /api/candles/) is kept this long per web process,
# so that many pages opening at once cost one read of the day.
LIVE_CANDLES_CACHE = env_float("LIVE_CANDLES_CACHE", 5.0, minimum=0.0)
# The live feed (web/live/hub.py; docs/live-page.md, "The live page at scale"): one channel-layer member per process
# fans the trades out to its pages.
LIVE_MAX_CONNECTIONS = env_int("LIVE_MAX_CONNECTIONS", 2500, minimum=1)  # pages per web process; more: 1013
# pages one client address may hold on a web process: one address cannot take every slot (1013 beyond)
LIVE_MAX_CONNECTIONS_PER_ADDRESS = env_int("LIVE_MAX_CONNECTIONS_PER_ADDRESS", 50, minimum=1)
LIVE_MAX_FRAME = env_int("LIVE_MAX_FRAME", 4096, minimum=125)  # bytes a page may send in a frame (also uvicorn's)
LIVE_SEND_QUEUE = env_int("LIVE_SEND_QUEUE", 50, minimum=2)  # frames a page may lag behind before it is dropped
LIVE_FLUSH_INTERVAL = env_float("LIVE_FLUSH_INTERVAL", 0.1, minimum=0.0)  # s: trades coalesced per page frame
LIVE_STATE_INTERVAL = env_float("LIVE_STATE_INTERVAL", 2.0, minimum=0.1)  # s: state push, the pages' heartbeat
LIVE_GROUP_EXPIRY = env_int("LIVE_GROUP_EXPIRY", 300, minimum=3)  # s: a process's membership unless renewed
LIVE_LAYER_CAPACITY = env_int("LIVE_LAYER_CAPACITY", 1000, minimum=100)  # messages waiting per layer channel
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Security (docs/security.md): production differs from development only by its environment ------------
# Behind a TLS proxy: the header it sets to "https" (X-Forwarded-Proto), so that Django knows the request
# was secure (CSRF's origin check, the HTTPS redirect). Set it only when clients cannot reach web directly.
SECURE_PROXY_SSL_HEADER = env_header("SECURE_PROXY_SSL_HEADER")
# Origins allowed to post besides the request's own (https://collector.example.com when the proxy rewrites Host).
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP; it tells nothing secret
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttle (django-axes): after LOGIN_FAILURE_LIMIT failures of one username from one address, that
# pair is refused (429) for LOGIN_COOLOFF seconds, whatever the password. The pair, not the address alone:
# behind a proxy every client may share one address. The attempts live in the database (axes' tables). The
# address is the client's own: uvicorn takes X-Forwarded-For only from FORWARDED_ALLOW_IPS (the Procfile
# passes it; empty by default: no proxy header is trusted).
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes asks
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "web.throttle.UserThrottleBackend",
                           "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
# And per user from anywhere (web/throttle.py): a guess spread over many addresses (a trusted proxy's clients).
LOGIN_USER_FAILURE_LIMIT = env_int("LOGIN_USER_FAILURE_LIMIT", 20, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_float("LOGIN_COOLOFF", 900.0, minimum=1.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no "AXES: BEGIN" line from every process; failures and lockouts are still logged
# Internal pages (web/access.py): /status/, /api/streams/ and /metrics need a staff login or
# `Authorization: Bearer $METRICS_TOKEN`; STATUS_PUBLIC=1 opens /status/ and /api/streams/ (a trusted network).
METRICS_TOKEN = env_secret("METRICS_TOKEN", "", min_length=32)
STATUS_PUBLIC = env_bool("STATUS_PUBLIC", False)

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
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                   # Members are web processes that renew their membership every third of this:
                   # a process that died is forgotten within it, not after channels-redis's 24 h.
                   "group_expiry": LIVE_GROUP_EXPIRY, "capacity": LIVE_LAYER_CAPACITY},
    }
}

# --- Binance endpoints (point them at the fake exchange offline) --------------------------------------
BINANCE_WS_URL = env_url("BINANCE_WS_URL", "wss://stream.binance.com:9443", ("ws", "wss"))
BINANCE_REST_URL = env_url("BINANCE_REST_URL", "https://api.binance.com", ("http", "https"))
# Binance's public trade archive (import_archive; the audit for old days); the fake exchange serves it too.
BINANCE_ARCHIVE_URL = env_url("BINANCE_ARCHIVE_URL", "https://data.binance.vision", ("http", "https"))

# --- Stream client tunables (docs/configuration.md) ---------------------------------------------------
BINANCE_BACKOFF_BASE = env_float("BINANCE_BACKOFF_BASE", 1.0, minimum=0.0)
BINANCE_BACKOFF_CAP = env_float("BINANCE_BACKOFF_CAP", 60.0, minimum=0.0)
BINANCE_BACKOFF_RESET_AFTER = env_float("BINANCE_BACKOFF_RESET_AFTER", 60.0, minimum=0.0)
BINANCE_SILENCE_TIMEOUT = env_float("BINANCE_SILENCE_TIMEOUT", 10.0, minimum=0.1)
BINANCE_PROBE_TIMEOUT = env_float("BINANCE_PROBE_TIMEOUT", 5.0, minimum=0.1)
BINANCE_ROTATE_AFTER = env_float("BINANCE_ROTATE_AFTER", 23.5 * 3600, minimum=1.0)
BINANCE_BACKFILL_MAX_TRADES = env_int("BINANCE_BACKFILL_MAX_TRADES", 100_000, minimum=0)
BINANCE_QUEUE_SIZE = env_int("BINANCE_QUEUE_SIZE", 10_000, minimum=1)
# Streams sharing one combined connection (the exchange allows 1024). 200 keeps the connect URL short
# (~3.5 KB), a dropped connection's backfill burst bounded, and 1,500 symbols on 8 connections.
# REST request weight of every process on this IP together, per window (the exchange allows 6,000 a minute
# per IP; 80 % leaves room for the validation calls and other clients on the IP, whose use the exchange's
# X-MBX-USED-WEIGHT-1M header reports).
BINANCE_REST_WEIGHT_BUDGET = env_int("BINANCE_REST_WEIGHT_BUDGET", 4800, minimum=1)
BINANCE_REST_WEIGHT_WINDOW = env_float("BINANCE_REST_WEIGHT_WINDOW", 60.0, minimum=1.0)
BINANCE_STREAMS_PER_CONNECTION = env_int("BINANCE_STREAMS_PER_CONNECTION", 200, minimum=1)
# `streams enable` asks (or, with no terminal, wants --yes) before enabling more streams than this at once.
STREAMS_ENABLE_CONFIRM_ABOVE = env_int("STREAMS_ENABLE_CONFIRM_ABOVE", 100, minimum=0)
if BINANCE_STREAMS_PER_CONNECTION > 1024:
    raise ImproperlyConfigured(f"BINANCE_STREAMS_PER_CONNECTION={BINANCE_STREAMS_PER_CONNECTION} is above the "
                               "exchange's 1024 streams per connection")

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
# Trades partitions (PostgreSQL, streams/partitions.py; the hourly `maintain partitions` task): months made
# ahead. Months are dropped by the dataset's hot window (DATASET_HOT_DAYS), once sealed in the lake.
COLLECTOR_PARTITIONS_AHEAD = env_int("COLLECTOR_PARTITIONS_AHEAD", 2, minimum=1)

# --- The dataset: the Parquet lake beside the database (streams/lake/, workers/seal.py, docs/dataset.md) -------
# Where sealed days live: a folder (relative to the checkout) or any URI pyarrow.fs understands (s3://...).
LAKE_URL = env_str("LAKE_URL", "lake/")
# How many UTC days (today included) also stay in the database once sealed; `all` keeps everything there.
DATASET_HOT_DAYS = env_days("DATASET_HOT_DAYS", 14)
# Every sealed file and every hot day is verified again at least once in this many days, spread evenly.
DATASET_SCRUB_DAYS = env_float("DATASET_SCRUB_DAYS", 7.0, minimum=0.01)
# Bounds of the archive import: a file beyond them is refused, nothing of it stored (workers/archive_download.py,
# streams/archive_rows.py). The busiest symbol's monthly trades zip is a few GB and inflates 4-8 times.
ARCHIVE_MAX_ZIP_BYTES = env_int("ARCHIVE_MAX_ZIP_BYTES", 16 << 30, minimum=1)
ARCHIVE_MAX_MEMBER_BYTES = env_int("ARCHIVE_MAX_MEMBER_BYTES", 64 << 30, minimum=1)
ARCHIVE_MAX_RATIO = env_float("ARCHIVE_MAX_RATIO", 40.0, minimum=1.0)
ARCHIVE_DOWNLOAD_DEADLINE = env_float("ARCHIVE_DOWNLOAD_DEADLINE", 3600.0, minimum=1.0)  # s per file
ARCHIVE_MIN_BYTES_PER_SECOND = env_float("ARCHIVE_MIN_BYTES_PER_SECOND", 50_000.0, minimum=0.0)  # over 30 s
# The longest range /api/trades/ streams per request (days); `manage.py trades` and export_trades have no bound.
DATASET_API_MAX_DAYS = env_int("DATASET_API_MAX_DAYS", 31, minimum=1)
# The longest range /api/coverage/ answers per request (days; one entry per stream and day). Without a range it
# answers the status calendar's last 35 days.
COVERAGE_API_MAX_DAYS = env_int("COVERAGE_API_MAX_DAYS", 366, minimum=1)

# --- Logs (docs/live-page.md, "Logs"): one line per record on stderr, the stream id on every line -------
# Celery's worker and beat apply this too (project/celery.py), so LOG_LEVEL is the one knob: celery -l is
# ignored. LOG_FORMAT=json writes one JSON object per line for log shippers.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
if not isinstance(logging.getLevelName(LOG_LEVEL), int):
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a level (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
# Each Celery process logs one line per interval saying what it did (workers/summary.py); 0: none.
LOG_SUMMARY_INTERVAL = env_float("LOG_SUMMARY_INTERVAL", 60.0, minimum=0.0)
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
