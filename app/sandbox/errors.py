"""Catapult's error shape: ``{category, code, message, details}`` (catapult-v1.md section 1)."""

from __future__ import annotations

from collections.abc import Iterable

MULTI_MESSAGE_LIMIT = 50


class CatapultError(Exception):
    """An error answered in Catapult's JSON shape with its HTTP status."""

    def __init__(
        self,
        status: int,
        category: str,
        code: str,
        message: str | None,
        details: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code)
        self.status = status
        self.category = category
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = headers or {}

    def body(self, extra_details: Iterable[tuple[str, str]] = ()) -> dict:
        """The JSON body; ``message`` is left out only where the platform leaves it out (429)."""
        details = [*self.details, *extra_details]
        body: dict = {"category": self.category, "code": self.code}
        if self.message is not None:
            body["message"] = self.message
        body["details"] = [{"name": name, "value": value} for name, value in details]
        return body


def bad_request(code: str, message: str) -> CatapultError:
    """A 400 ``bad-request`` error."""
    return CatapultError(400, "bad-request", code, message)


def bad_parameters(reason: str | None = None) -> CatapultError:
    """The generic 400 ``validation-error`` "Bad parameters" (errors.md)."""
    return bad_request(
        "validation-error", f"Bad parameters: {reason}" if reason else "Bad parameters"
    )


def missing_property(name: str) -> CatapultError:
    """400 ``missing-property`` with the platform's wording."""
    return bad_request(
        "missing-property",
        f"The 'message' resource property '{name}' is required but was not specified",
    )


def blank_property(name: str) -> CatapultError:
    """400 ``blank-property`` with the platform's wording (postMessages.md example)."""
    return bad_request(
        "blank-property",
        f"The 'message' resource property '{name}' "
        "must contain at least one non-whitespace character",
    )


def not_one_of(name: str, values: Iterable[str], resource: str = "message") -> CatapultError:
    """400 ``validation-error``: "must be one of the following values"."""
    return bad_request(
        "validation-error",
        f"The '{resource}' resource property '{name}' must be one of the following values: "
        + ", ".join(values),
    )


def exceeds_limit(name: str, limit: int, resource: str = "message") -> CatapultError:
    """400 ``validation-error``: "exceeds the limit of"."""
    return bad_request(
        "validation-error",
        f"The '{resource}' resource property '{name}' exceeds the limit of {limit}",
    )


def not_greater(name: str, bound: int, resource: str = "message") -> CatapultError:
    """400 ``validation-error``: "must be greater than"."""
    return bad_request(
        "validation-error",
        f"The '{resource}' resource property '{name}' must be greater than {bound}",
    )


def invalid_phone_number() -> CatapultError:
    """400 ``validation-error`` "Invalid phone number" (errors.md)."""
    return bad_request("validation-error", "Invalid phone number")


def invalid_url(name: str, value: object) -> CatapultError:
    """400 ``validation-error`` "Invalid ... URL" (errors.md), used for media URLs."""
    return bad_request("validation-error", f"Invalid {name} URL. {value} is not a valid URL")


def callback_invalid_url(value: object) -> CatapultError:
    """400 ``callback-invalid-url`` for a bad callbackUrl / fallbackUrl (errors.md)."""
    return bad_request(
        "callback-invalid-url", f"The URL {value} is not a valid callbackUrl/fallbackUrl"
    )


def multi_message_limit(count: int) -> CatapultError:
    """403 ``limit`` / ``multi-message-limit``: more than 50 messages in one request."""
    return CatapultError(
        403,
        "limit",
        "multi-message-limit",
        f"The number of messages [{count}] in the multi message request is greater than "
        f"the limit [{MULTI_MESSAGE_LIMIT}].",
    )


def message_rate_limit(mps: float, rate: float) -> CatapultError:
    """403 ``message-rate-limit``: sends over the limit get 403, not 429 (catapult-v1.md)."""
    return CatapultError(
        403,
        "limit",
        "message-rate-limit",
        f"You can send {mps:g} messages per 1 seconds, calculated as the average over 10 seconds. "
        f"Your rate is: {rate:g}",
    )


def message_not_found(message_id: str) -> CatapultError:
    """404 ``message-not-found`` with the message id in details (as the platform answers)."""
    return CatapultError(
        404,
        "not-found",
        "message-not-found",
        f"The message '{message_id}' could not be found",
        details=[("messageId", message_id)],
    )


def rate_limit_reached(reset_ms: int) -> CatapultError:
    """429 ``too-many-requests`` / ``rate-limit-reached`` on a read endpoint.

    catapult-v1.md 1: ``X-RateLimit-Reset`` is epoch milliseconds and the documented body has
    no ``message`` key (clients must cope; the python SDK raises KeyError on it).
    """
    return CatapultError(
        429,
        "too-many-requests",
        "rate-limit-reached",
        None,
        headers={"X-RateLimit-Reset": str(reset_ms)},
    )
