"""The relay's application factory."""

from __future__ import annotations

import os
import sys

from flask import Flask, request

from .config import ConfigError, load_settings


def create_app(config: dict | None = None) -> Flask:
    """Build the relay: settings, extensions, blueprints, error envelope, CLI, dispatcher."""
    # No app-wide /static: the dashboard serves its own assets behind its credentials.
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.json.sort_keys = False  # keep the resources' field order, as documented
    register_config(app, config)
    register_extensions(app)
    register_limits(app)
    register_blueprints(app)
    register_errors(app)
    register_cli(app)
    register_proxies(app)
    register_request_ids(app)
    register_dispatcher(app)
    return app


def register_config(app: Flask, config: dict | None) -> None:
    """Settings from the environment (validated once), then the caller's overrides."""
    env = dict(os.environ)
    if config and config.get("TESTING"):
        env.setdefault("RELAY_ENV", "testing")
        env.pop("DATABASE_URL", None)
    settings = load_settings(env, instance_path=app.instance_path)
    app.config.update(settings.values)
    app.config.update(
        API_TITLE="Catapult relay",
        API_VERSION="1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={"info": {"description": OPENAPI_DESCRIPTION}},
        # The dashboard's session (its CSRF token) is never sent along with another site's
        # request; the browser resends Basic credentials to any site that asks, so the token
        # is what stands between a forged form and the reconcile button.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    if config:
        app.config.update(config)
        if "DATABASE_URL" in config:
            app.config["SQLALCHEMY_DATABASE_URI"] = config["DATABASE_URL"]
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config["SQLALCHEMY_DATABASE_URI"])
    )
    app.config["GENERATED_SECRETS"] = settings.generated
    if settings.generated and app.config["RELAY_ENV"] == "development":
        # Printed once, when first generated; kept in instance/dev-secrets.json afterwards.
        shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.generated.items()))
        print(
            f"RELAY_ENV=development: generated local secrets ({shown}); "
            f"they are kept in {app.instance_path}/dev-secrets.json",
            file=sys.stderr,
        )
    if settings.errors and not (config and config.get("TESTING")):
        message = "Invalid configuration:\n  - " + "\n  - ".join(settings.errors)
        if os.environ.get("FLASK_RUN_FROM_CLI") and _cli_command() in TOLERANT_COMMANDS:
            # Development tools (the sandbox, migrations) must start in a bare shell.
            app.config["CONFIG_ERRORS"] = settings.errors
        else:
            raise ConfigError(message)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        os.makedirs(app.instance_path, exist_ok=True)


def engine_options(url: str) -> dict:
    """PostgreSQL: give up on a server that does not answer within seconds (a connection that
    hangs would hold a worker thread), unless the URL says otherwise. The callback path has
    its own, shorter deadline (``CALLBACK_DB_BUDGET_MS``); this bounds everything else."""
    if not url.startswith("postgresql"):
        return {}
    defaults = {
        "connect_timeout": 3,
        # A server that vanished (host down, network cut) is noticed within ~10 s instead of
        # the kernel's default of minutes.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "tcp_user_timeout": 10000,
    }
    query = url.partition("?")[2]
    return {"connect_args": {k: v for k, v in defaults.items() if f"{k}=" not in query}}


OPENAPI_DESCRIPTION = (
    "Send SMS/MMS through Catapult v1 and follow every message to its final state. Errors are "
    "Catapult's `{category, code, message, details}` everywhere. `/api` takes a bearer API key; "
    "the callback URLs take the Basic credentials the relay gives the carrier. The browser "
    "dashboard (`/dashboard`, Basic credentials of its own) is HTML and not described here."
)

# CLI commands that do not need the relay's secrets: they run with the database URL alone.
TOLERANT_COMMANDS = {"sandbox", "db", "routes", "shell", "--help", None}


def _cli_command() -> str | None:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    # `flask --app wsgi <command>`: skip the option value that follows --app.
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg in ("--app", "-A", "-e", "--env-file"):
            args = [a for a in argv[i + 2 :] if not a.startswith("-")]
    return args[0] if args else None


def register_extensions(app: Flask) -> None:
    from . import db_setup
    from .extensions import SessionOnlyWhenSent, api, db, migrate
    from .ingest import init_ingest
    from .metrics import init_metrics
    from .openapi import Conventions

    app.session_interface = SessionOnlyWhenSent()
    db.init_app(app)
    migrations = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "migrations"))
    migrate.init_app(app, db, directory=migrations)
    with app.app_context():
        db_setup.configure_engine(db.engine)
        init_ingest(app, db.engine)
    api.init_app(app, spec_kwargs={"extra_plugins": [Conventions()]})
    init_metrics(app)


def register_limits(app: Flask) -> None:
    """Bodies over ``MAX_BODY_BYTES`` are refused (413) before they are read, by their
    ``Content-Length``; the callback routes apply their own, smaller limit first.

    A chunked body has no length to tell: it is read here, up to one byte past its route's
    limit, and refused when it has that byte. (werkzeug's own ``MAX_CONTENT_LENGTH`` stops a
    single read at the limit and returns what it has: the body would be cut short silently,
    stored cut as a callback or read cut as a send.) ``errors.read_body`` also refuses a body
    its client cut short."""
    from .errors import too_large

    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"] + 1

    @app.before_request
    def refuse_large_bodies():
        environ = request.environ
        if "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" not in environ:
            return  # no body (a GET callback): nothing to check
        length, limit, what = request.content_length, app.config["MAX_BODY_BYTES"], None
        if length is not None:
            if length > limit:
                raise too_large(limit)
        elif request.environ.get("HTTP_TRANSFER_ENCODING"):  # chunked: no length to tell
            # (Only then: gunicorn marks every request's input terminated, and a GET callback
            # without a body must not pay for reading one.)
            if request.blueprint == "callbacks":
                limit, what = app.config["CALLBACK_MAX_BODY_BYTES"], "Callback requests"
            request.max_content_length = limit + 1
            if len(request.get_data(cache=True)) > limit:
                raise too_large(limit, what or "Request bodies")


def register_proxies(app: Flask) -> None:
    """``X-Forwarded-*`` from ``TRUSTED_PROXIES`` hops, believed only from the peers of
    ``FORWARDED_ALLOW_IPS`` (0 hops: not at all, so a client cannot spoof them)."""
    from .proxies import wrap

    app.wsgi_app = wrap(
        app.wsgi_app, app.config["TRUSTED_PROXIES"], app.config["FORWARDED_ALLOW_IPS"]
    )


def register_request_ids(app: Flask) -> None:
    """Every request gets an id (the proxy's ``X-Request-ID`` or a new one) for its log line
    (``requestlog``); and no log line shows this app's secrets (``logs.scrub``)."""
    from .logs import register_secrets
    from .requestlog import ROUTE, RequestId

    app.wsgi_app = RequestId(app.wsgi_app)
    register_secrets(app.config)

    @app.teardown_request
    def keep_route(_exc=None):
        # For the request line, written after Flask has let go of the request object.
        rule = request.url_rule
        request.environ[ROUTE] = rule.rule if rule is not None else None


def register_blueprints(app: Flask) -> None:
    from . import api as api_views
    from . import callbacks, dashboard, ops
    from .extensions import api
    from .openapi import document_other_routes
    from .webhooks import api as webhook_views
    from .webhooks import pages  # noqa: F401  (its views join the dashboard's blueprint)

    api.register_blueprint(api_views.bp)
    api.register_blueprint(webhook_views.bp)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(ops.bp)
    document_other_routes(api.spec, app)


def register_errors(app: Flask) -> None:
    from .errors import register_error_handlers

    register_error_handlers(app)


def register_cli(app: Flask) -> None:
    from .cli import register_commands

    register_commands(app)


def register_dispatcher(app: Flask) -> None:
    from .worker import start_inline_dispatcher

    start_inline_dispatcher(app)
