"""Settings (DESIGN §3) and the policy's ISO 8601 durations, as plain unit tests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from config import DEVELOPMENT_JWT_SECRET, Environment, Settings
from domain.policy import Policy, add_duration, halfway, subtract_duration


def test_settings_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("PARTNERFLOW_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert (s.env, s.api_port, s.temporal_port, s.ui_port) == (
        Environment.development,
        8000,
        7233,
        8233,
    )
    assert s.resolved_temporal_address == "127.0.0.1:7233"
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.policy == Policy(
        po_review_sla="P5D",
        cert_validity="P12M",
        recert_window="P60D",
        payout_sla="P15D",
        invite_ttl="P7D",
        incentive_apps_per_month=5,
    )


def test_settings_read_prefixed_and_nested_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNERFLOW_API_PORT", "9000")
    monkeypatch.setenv("PARTNERFLOW_DATABASE_URL", "postgresql://u@db:5432/pf")
    monkeypatch.setenv("PARTNERFLOW_POLICY__PO_REVIEW_SLA", "PT10S")
    monkeypatch.setenv("PARTNERFLOW_POLICY__INCENTIVE_APPS_PER_MONTH", "7")
    s = Settings()
    assert s.api_port == 9000 and s.resolved_database_url == "postgresql://u@db:5432/pf"
    assert s.policy.po_review_sla == "PT10S" and s.policy.incentive_apps_per_month == 7


def test_development_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNERFLOW_ENV", "production")
    monkeypatch.delenv("PARTNERFLOW_JWT_SECRET", raising=False)
    with pytest.raises(ValidationError, match="development value"):
        Settings()
    monkeypatch.setenv("PARTNERFLOW_JWT_SECRET", "x" * 40)
    assert Settings().jwt_secret != DEVELOPMENT_JWT_SECRET


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(jwt_secret="short")


@pytest.mark.parametrize("bad", ["5 days", "P", "-P1D", "PT0S", "", "P1X"])
def test_policy_durations_must_be_positive_iso_8601(bad: str) -> None:
    with pytest.raises(ValidationError):
        Policy(po_review_sla=bad)


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (datetime(2027, 1, 31, tzinfo=UTC), "P1M", datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), "P1M", datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2028, 2, 29, tzinfo=UTC), "P12M", datetime(2029, 2, 28, tzinfo=UTC)),
        (datetime(2027, 3, 1, 8, tzinfo=UTC), "P5D", datetime(2027, 3, 6, 8, tzinfo=UTC)),
        (datetime(2027, 3, 1, 8, tzinfo=UTC), "PT10S", datetime(2027, 3, 1, 8, 0, 10, tzinfo=UTC)),
    ],
)
def test_durations_add_calendar_months(start: datetime, duration: str, expected: datetime) -> None:
    assert add_duration(start, duration) == expected


def test_durations_subtract_and_halve() -> None:
    end = datetime(2027, 12, 31, tzinfo=UTC)
    assert subtract_duration(end, "P60D") == datetime(2027, 11, 1, tzinfo=UTC)
    start = datetime(2027, 3, 1, tzinfo=UTC)
    assert halfway(start, add_duration(start, "P5D")) == datetime(2027, 3, 3, 12, tzinfo=UTC)
