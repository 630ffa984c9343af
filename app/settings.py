"""The one settings object. Every knob is an environment variable documented in the README."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        repr=False,  # may hold a password
        description="PostgreSQL server URL; unset means the embedded pgserver database.",
    )
    data_dir: Path = Field(
        default=PROJECT_ROOT / ".roi",
        validation_alias="ROI_DATA_DIR",
        description="Where the embedded PostgreSQL keeps its data.",
    )
    stripe_webhook_secret: str = Field(
        default="",
        validation_alias="STRIPE_WEBHOOK_SECRET",
        repr=False,  # a logged Settings (or a middleware list) must not show a secret
        description="Webhook signing secret(s), comma-separated to rotate without losing events.",
    )
    reporting_currency: str = Field(default="usd", validation_alias="REPORTING_CURRENCY")
    timezone: str = Field(default="UTC", validation_alias="ROI_TIMEZONE")
    stream_metadata_key: str = Field(
        default="stream",
        validation_alias=AliasChoices("ROI_STREAM_METADATA_KEY", "STREAM_METADATA_KEY"),
    )
    auto_migrate: bool = Field(default=False, validation_alias="ROI_AUTO_MIGRATE")
    webhook_tolerance_seconds: int = Field(default=300, validation_alias="ROI_WEBHOOK_TOLERANCE")
    db_pool_size: int = Field(default=8, ge=1, validation_alias="ROI_DB_POOL_SIZE")
    db_timeout_seconds: float = Field(default=2.0, gt=0, validation_alias="ROI_DB_TIMEOUT")
    ingest_writers: int = Field(default=2, ge=1, validation_alias="ROI_INGEST_WRITERS")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        validation_alias="ROI_LOG_FORMAT",
        description="json: one JSON object per line; text: for people; auto: text on a TTY.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", validation_alias="ROI_LOG_LEVEL"
    )
    # Access control (app/auth).
    secret_key: str = Field(
        default="",
        validation_alias="ROI_SECRET_KEY",
        repr=False,
        description="Signs session cookies; unset: a key generated once and kept in the database.",
    )
    session_hours: float = Field(default=12.0, gt=0, validation_alias="ROI_SESSION_HOURS")
    metrics_public: bool = Field(default=True, validation_alias="ROI_METRICS_PUBLIC")
    # Catch-up from the Stripe API (ingest/stripe_catchup.py).
    stripe_api_key: str = Field(
        default="",
        validation_alias="STRIPE_API_KEY",
        repr=False,
        description="Secret or restricted key (read events and balance transactions).",
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com", validation_alias="STRIPE_API_BASE"
    )
    stripe_api_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias="ROI_STRIPE_API_TIMEOUT"
    )
    stripe_give_up_seconds: float = Field(
        default=120.0, gt=0, validation_alias="ROI_STRIPE_GIVE_UP_SECONDS"
    )
    fee_fetch_interval_seconds: float = Field(
        default=60.0, gt=0, validation_alias="ROI_FEE_FETCH_INTERVAL"
    )
    # Trend alerts (app/alerts).
    alert_webhook_url: str | None = Field(
        default=None,
        validation_alias="ROI_ALERT_WEBHOOK_URL",
        description="Slack-compatible incoming webhook for trend alerts; unset: only stored.",
    )
    alert_interval_seconds: float = Field(
        default=300.0, ge=0, validation_alias="ROI_ALERT_INTERVAL"
    )
    alert_min_daily_change: Decimal = Field(
        default=Decimal(10),
        gt=0,
        validation_alias="ROI_ALERT_MIN_DAILY_CHANGE",
        description="Smallest change of net revenue or margin a day worth an alert, in major "
        "units of REPORTING_CURRENCY.",
    )

    @field_validator("reporting_currency")
    @classmethod
    def _lower_currency(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 3 or not value.isalpha():
            raise ValueError("REPORTING_CURRENCY must be a 3-letter ISO 4217 code, e.g. usd")
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"ROI_TIMEZONE {value!r} is not an IANA time zone") from exc
        return value

    @field_validator("stream_metadata_key")
    @classmethod
    def _non_empty_key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ROI_STREAM_METADATA_KEY must not be empty")
        return value.strip()

    @property
    def webhook_secrets(self) -> list[str]:
        """All configured signing secrets; an empty list means the webhook must refuse."""
        return [s.strip() for s in self.stripe_webhook_secret.split(",") if s.strip()]

    @property
    def uses_embedded_database(self) -> bool:
        return not self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
