"""pydantic models of what crosses the wire: auth bodies, the ingest envelope, error bodies.

Entries are deliberately *not* modelled: their fields depend on the object type, the server
validates them, and running pydantic over every entry would dominate the hot path. The client
validates the envelope once per call and encodes entries with orjson.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from ._constants import MAX_ENTRIES_PER_REQUEST

__all__ = [
    "AuthRequest",
    "AuthResponse",
    "ErrorBody",
    "IngestEnvelope",
    "IngestRequestBody",
]

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class AuthRequest(_Wire):
    """Body of the auth call (doc): ``{"username", "apiKey", "cdpGKey"}``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    username: str = ""
    api_key: SecretStr = Field(default=SecretStr(""), alias="apiKey")
    group_key: SecretStr = Field(default=SecretStr(""), alias="cdpGKey")


class AuthResponse(_Wire):
    """A successful auth answer (doc). Times are epoch milliseconds, ``expiredAfter`` seconds."""

    success: bool
    token: SecretStr
    expired_at_ms: int | None = Field(default=None, alias="expiredAt")
    issued_at_ms: int | None = Field(default=None, alias="issuedAt")
    expired_after_s: float | None = Field(default=None, alias="expiredAfter")
    status: str | None = None

    def lifetime_s(self) -> float | None:
        """How long the token lives, measured without trusting either side's wall clock."""
        if self.expired_after_s is not None:
            return float(self.expired_after_s)
        if self.expired_at_ms is not None and self.issued_at_ms is not None:
            return (self.expired_at_ms - self.issued_at_ms) / 1000.0
        return None


class ErrorBody(_Wire):
    """The documented error shape: ``{"success": false, "errorCode", "message"}`` (+ requestId)."""

    success: bool | None = None
    error_code: str | None = Field(default=None, alias="errorCode")
    message: str | None = None
    request_id: str | None = Field(default=None, alias="requestId")


class IngestEnvelope(BaseModel):
    """Everything in an ingest body except the entries; validated once per call."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    object_type: NonEmptyStr = Field(alias="objectType")
    source: NonEmptyStr
    je_config_id: str | None = Field(default=None, alias="jeConfigId")
    je_event_key: str | None = Field(default=None, alias="jeEventKey")
    ignored_update_cfs: list[str] | None = Field(default=None, alias="ignoredUpdateCfs")

    def wire_fields(self) -> dict[str, Any]:
        """The envelope as the server spells it, optional fields left out when unset."""
        return self.model_dump(by_alias=True, exclude_none=True)


class IngestRequestBody(IngestEnvelope):
    """A whole ingest body, as FakePangoCDP parses it."""

    entries: Annotated[
        list[dict[str, Any]],
        Field(min_length=1, max_length=MAX_ENTRIES_PER_REQUEST),
    ]
