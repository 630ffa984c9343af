"""The one settings object. Every knob is an environment variable documented in the README."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
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

    @field_validator("reporting_currency")
    @classmethod
    def _lower_currency(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 3 or not value.isalpha():
            raise ValueError("REPORTING_CURRENCY must be a 3-letter ISO 4217 code, e.g. usd")
        return value

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
