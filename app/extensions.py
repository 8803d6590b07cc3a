"""Extension objects, created here so that no module imports the factory."""

from __future__ import annotations

from flask.sessions import SecureCookieSessionInterface
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Deterministic constraint names, so migrations name the same thing on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RelayApi(Api):
    """flask-smorest's Api with the relay's error responses (Catapult's shape, ``openapi``)
    in place of its own, and no catch-all ``default`` response: every status is listed."""

    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self):
        from .openapi import register_components

        register_components(self.spec)


db = SQLAlchemy(model_class=Base)
migrate = Migrate(compare_type=True, render_as_batch=True)
api = RelayApi()


class SessionOnlyWhenSent(SecureCookieSessionInterface):
    """Flask's signed-cookie session, unpacked only when the request carries the cookie.

    Only the dashboard keeps anything in the session (its CSRF token). Callbacks and API
    calls never send the cookie, and building the signing serializer for each of them cost a
    measurable share of a callback's CPU; they get a fresh empty session instead, exactly what
    the stock interface returns when the cookie is absent."""

    def open_session(self, app, request):
        # No Cookie header at all (every callback): not even the cookies are parsed.
        if "HTTP_COOKIE" not in request.environ or (
            self.get_cookie_name(app) not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)
